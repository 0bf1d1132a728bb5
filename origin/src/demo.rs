//! `allot demo seed`: a demo client and key, a small catalogue, a few thousand encrypted demo
//! cards, and the cache filled, so a first `curl` allocates a real card.

use allot_shared::{ApiKey, Currency, Denomination};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::InventoryCache;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::ops::{self, NewCard};

/// The fixed id of the demo client, so seeding twice reuses it.
pub const DEMO_CLIENT_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_de30);

/// A demo catalogue: product id, name, currency, denominations.
type Products = &'static [(&'static str, &'static str, &'static str, &'static [&'static str])];

/// The default demo catalogue.
const STANDARD: Products = &[
    ("gift-usd", "Demo gift card (USD)", "USD", &["10.00", "25.00", "50.00", "100.00"]),
    ("games-eur", "Demo games wallet (EUR)", "EUR", &["20.00", "50.00"]),
    ("mobile-jpy", "Demo mobile top-up (JPY)", "JPY", &["1000", "3000"]),
];

/// A second region's catalogue, in dollars only, with no product id in common with [`STANDARD`]
/// (so two regions' answers cannot be mistaken for each other).
const US: Products = &[
    ("store-usd", "Demo US store card (USD)", "USD", &["15.00", "40.00"]),
    ("games-usd", "Demo US games wallet (USD)", "USD", &["20.00", "60.00"]),
];

/// Which demo catalogue `allot demo seed` creates (`--catalogue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catalogue {
    /// `standard`: gift-usd, games-eur, mobile-jpy.
    #[default]
    Standard,
    /// `us`: store-usd and games-usd, dollars only.
    Us,
}

impl Catalogue {
    fn products(self) -> Products {
        match self {
            Catalogue::Standard => STANDARD,
            Catalogue::Us => US,
        }
    }
}

impl std::str::FromStr for Catalogue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Catalogue::Standard),
            "us" => Ok(Catalogue::Us),
            other => Err(format!("unknown demo catalogue {other:?}: use standard or us")),
        }
    }
}

/// What the seed did.
pub struct Seeded {
    /// The demo key, shown once.
    pub key: ApiKey,
    /// Cards added by this run.
    pub cards_added: usize,
}

fn demo_code() -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let s = data_encoding_upper(&b);
    format!("DEMO-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12])
}

fn data_encoding_upper(b: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    b.iter().map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char).collect()
}

/// Seed the demo data, topping each denomination of `catalogue` up to `per_denomination` active cards.
pub async fn seed(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    cfg: &Config,
    catalogue: Catalogue,
    per_denomination: usize,
) -> anyhow::Result<Seeded> {
    seed_with(pool, cache, &cfg.card_keys, &cfg.region, catalogue, per_denomination).await
}

/// [`seed`] with explicit parts (for tests and tools).
pub async fn seed_with(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    keys: &KeyRing,
    region: &allot_shared::Region,
    catalogue: Catalogue,
    per_denomination: usize,
) -> anyhow::Result<Seeded> {
    let client = ops::create_client(pool, &ops::Actor::cli(), "Demo client", region, Some(DEMO_CLIENT_ID)).await?;
    let key = ops::issue_key(pool, &ops::Actor::cli(), client, Some("demo")).await?;
    let mut cards_added = 0;
    for (id, name, currency, denominations) in catalogue.products() {
        let currency = Currency::parse(currency).map_err(anyhow::Error::msg)?;
        let denominations: Vec<Denomination> = denominations
            .iter()
            .map(|d| Denomination::parse(d))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let minors = ops::upsert_product(pool, &ops::Actor::cli(), id, name, currency, &denominations).await?;
        for minor in minors {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM inventories WHERE product_id = $1 AND denomination_minor = $2 AND status = 'active'",
            )
            .bind(id)
            .bind(minor)
            .fetch_one(pool)
            .await?;
            let missing = per_denomination.saturating_sub(active as usize);
            let cards: Vec<NewCard> =
                (0..missing).map(|_| NewCard { code: demo_code(), pin: None, expires_at: None }).collect();
            cards_added += ops::load_cards(pool, &ops::Actor::cli(), None, keys, id, minor, &cards).await?.len();
        }
        if let Some(cache) = cache {
            ops::rebuild_product_cache(pool, cache, id).await?;
        }
    }
    Ok(Seeded { key, cards_added })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogues_by_name_and_distinct() {
        assert_eq!("standard".parse::<Catalogue>(), Ok(Catalogue::Standard));
        assert_eq!("us".parse::<Catalogue>(), Ok(Catalogue::Us));
        assert!("US".parse::<Catalogue>().unwrap_err().contains("use standard or us"));
        assert_eq!(Catalogue::default(), Catalogue::Standard);
        for (id, ..) in US {
            assert!(STANDARD.iter().all(|(other, ..)| other != id), "{id} in both catalogues");
        }
        assert!(US.iter().all(|(_, _, currency, _)| *currency == "USD"));
    }
}
