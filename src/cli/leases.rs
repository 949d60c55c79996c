//! `status`: which replica holds which account, for deployments of several replicas.

use chrono::{DateTime, Utc};
use ordersync::store::{LeaseRow, ReplicaRow};
use serde_json::{Value, json};

/// The holder of a lease that is still valid at `now`.
fn live_holder(lease: &LeaseRow, now: DateTime<Utc>) -> Option<&str> {
    lease.holder.as_deref().filter(|_| lease.expires_at > now)
}

pub fn print(leases: &[LeaseRow], replicas: &[ReplicaRow], now: DateTime<Utc>) {
    println!();
    println!("{:<48} {:>7} {:>10}", "replica", "leases", "seen");
    for replica in replicas {
        let held = leases
            .iter()
            .filter(|l| live_holder(l, now) == Some(replica.holder.as_str()))
            .count();
        println!(
            "{:<48} {:>7} {:>10}",
            replica.holder,
            held,
            format!("{}s ago", (now - replica.seen_at).num_seconds().max(0))
        );
    }
    println!();
    println!(
        "{:<32} {:<48} {:>12} {:>6}",
        "lease", "holder", "expires in", "token"
    );
    for lease in leases {
        let (holder, expires) = match live_holder(lease, now) {
            Some(holder) => (
                holder.to_owned(),
                format!("{}s", (lease.expires_at - now).num_seconds().max(0)),
            ),
            None => (
                "(free: the next replica to look takes it)".to_owned(),
                "-".to_owned(),
            ),
        };
        println!(
            "{:<32} {:<48} {:>12} {:>6}",
            format!("{}/{}", lease.provider, lease.account),
            holder,
            expires,
            lease.token
        );
    }
}

pub fn leases_json(leases: &[LeaseRow]) -> Value {
    leases
        .iter()
        .map(|lease| {
            json!({
                "provider": lease.provider,
                "account": lease.account,
                "holder": lease.holder,
                "expires_at": lease.expires_at,
                "acquired_at": lease.acquired_at,
                "token": lease.token,
            })
        })
        .collect()
}

pub fn replicas_json(replicas: &[ReplicaRow], leases: &[LeaseRow]) -> Value {
    let now = Utc::now();
    replicas
        .iter()
        .map(|replica| {
            json!({
                "replica": replica.holder,
                "started_at": replica.started_at,
                "seen_at": replica.seen_at,
                "leases": leases
                    .iter()
                    .filter(|l| live_holder(l, now) == Some(replica.holder.as_str()))
                    .count(),
            })
        })
        .collect()
}
