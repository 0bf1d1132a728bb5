//! The inventory cache's primitives against the real Valkey-compatible server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use allot_origin::cache::{InventoryCache, PopArgs, Popped};

fn cache() -> (InventoryCache, String) {
    let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    (InventoryCache::new(&common::valkey_address(), &prefix, Duration::from_secs(2)).unwrap(), prefix)
}

fn ids(p: Popped) -> Vec<i64> {
    match p {
        Popped::Ids(ids) => ids,
        other => panic!("no ids: {other:?}"),
    }
}

#[tokio::test]
async fn pops_take_only_the_denomination_asked_for_each_id_once() {
    let (c, _) = cache();
    assert_eq!(c.pop("p", 1000, 1).await.unwrap(), Popped::Cold);
    // Neighbouring scores on both sides, and ids that sort differently as text and as numbers.
    let mut members: Vec<(i64, i64)> = (1..=300).map(|i| (1000, i)).collect();
    members.extend((301..=310).map(|i| (500, i)));
    members.extend((311..=320).map(|i| (2500, i)));
    c.replace("p", &members).await.unwrap();
    let mut seen = HashSet::new();
    loop {
        let got = match c.pop("p", 1000, 7).await.unwrap() {
            Popped::Short { available } => {
                // Fewer than asked for: nothing is taken, and the answer says how many remain.
                assert_eq!(available as usize, 300 - seen.len());
                assert_eq!(c.counts("p", &[1000]).await.unwrap(), Some(vec![available]));
                ids(c.pop("p", 1000, available as usize).await.unwrap())
            }
            other => ids(other),
        };
        assert!(got.len() == 7 || seen.len() + got.len() == 300, "exact batches until the last");
        for id in &got {
            let id = *id;
            assert!((1..=300).contains(&id), "only denomination 1000: {id}");
            assert!(seen.insert(id), "{id} popped twice");
        }
        if seen.len() == 300 {
            break;
        }
    }
    assert_eq!(seen.len(), 300);
    // Warm but empty for this denomination; the others are untouched.
    assert_eq!(c.pop("p", 1000, 1).await.unwrap(), Popped::Short { available: 0 });
    assert_eq!(c.counts("p", &[500, 1000, 2500]).await.unwrap(), Some(vec![10, 0, 10]));
}

#[tokio::test]
async fn pops_spread_over_the_set_and_put_back_needs_a_built_set() {
    let (c, _) = cache();
    let members: Vec<(i64, i64)> = (1..=10_000).map(|i| (1000, i)).collect();
    c.replace("p", &members).await.unwrap();
    let firsts: Vec<i64> = futures::future::join_all((0..20).map(|_| c.pop("p", 1000, 1)))
        .await
        .into_iter()
        .map(|p| ids(p.unwrap())[0])
        .collect();
    let distinct: HashSet<i64> = firsts.iter().map(|id| id / 500).collect();
    assert!(distinct.len() >= 5, "concurrent pops land far apart: {firsts:?}");
    assert_eq!(c.put_back("p", 1000, &firsts).await.unwrap(), 20);
    assert_eq!(c.counts("p", &[1000]).await.unwrap(), Some(vec![10_000]));
    // Never into a missing set: that would make a partial set look complete.
    assert_eq!(c.put_back("q", 1000, &[1, 2]).await.unwrap(), 0);
    assert_eq!(c.pop("q", 1000, 1).await.unwrap(), Popped::Cold);
}

/// The slot of `key` on a cluster (`None` on a single server).
async fn slot_of(key: String) -> Option<i64> {
    if !common::valkey_address().is_cluster() {
        return None;
    }
    let mut conn = common::valkey_connection();
    Some(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut conn).await.unwrap())
}

#[tokio::test]
async fn a_batch_over_many_products_and_their_states_answer_in_order() {
    // On a cluster these products live in different slots (checked below), and one pipeline
    // may not span slots: the batch is sent per product and put back in order.
    let (c, _) = cache();
    let products: Vec<String> = (0..12).map(|i| format!("multi{i}")).collect();
    let slots: HashSet<Option<i64>> =
        futures::future::join_all(products.iter().map(|p| slot_of(c.key(p)))).await.into_iter().collect();
    assert!(common::valkey_address().is_cluster() == (slots.len() > 1), "slots {slots:?}");
    for (i, p) in products.iter().enumerate().skip(1) {
        let members: Vec<(i64, i64)> = (1..=i as i64).map(|n| (1000, i as i64 * 100 + n)).collect();
        c.replace(p, &members).await.unwrap();
    }
    let asks: Vec<PopArgs> = products
        .iter()
        .enumerate()
        .map(|(i, p)| PopArgs { product_id: p, denomination_minor: 1000, quantity: i.clamp(1, 2), key: None })
        .collect();
    let popped = c.pop_many(&asks).await.unwrap();
    assert_eq!(popped.len(), products.len());
    assert_eq!(popped[0], Popped::Cold, "never built");
    assert_eq!(popped[1], Popped::Ids(vec![101]), "the only card of multi1");
    for (i, p) in popped.iter().enumerate().skip(2) {
        let got = ids(p.clone());
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|id| id / 100 == i as i64), "multi{i} answered with another's ids: {got:?}");
    }
    let states = c.states(&products).await.unwrap();
    assert_eq!(states[0], allot_origin::cache::CacheState::Cold);
    assert!(states[1..].iter().all(|s| *s == allot_origin::cache::CacheState::Warm), "{states:?}");
}
