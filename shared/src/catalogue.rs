//! The product catalogue returned by `GET /v1/products`.

use serde::{Deserialize, Serialize};

use crate::money::Currency;

/// The whole catalogue visible to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Products, ordered by id.
    pub products: Vec<CatalogueEntry>,
}

/// One product with its denominations and availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    /// The product id used in allocation requests.
    pub product_id: String,
    /// A display name.
    pub name: String,
    /// The currency of every denomination.
    pub currency: Currency,
    /// Denominations in ascending order.
    pub denominations: Vec<DenominationStock>,
}

/// One denomination and how many cards of it can be allocated now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DenominationStock {
    /// The face value (`"25.00"`).
    pub denomination: String,
    /// Cards available right now (a snapshot).
    pub available: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Catalogue {
            products: vec![CatalogueEntry {
                product_id: "p".into(),
                name: "Gift card".into(),
                currency: Currency::parse("EUR").unwrap(),
                denominations: vec![DenominationStock { denomination: "10.00".into(), available: 3 }],
            }],
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Catalogue>(&json).unwrap(), c);
    }
}
