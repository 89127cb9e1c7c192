//! `nokv bench etcd-create|etcd-get`: the same loads against an etcd
//! cluster, so that NoKV and etcd are measured side by side by one command
//! on one machine (`scripts/bench-vs-etcd.sh`).
//!
//! A create is what JuiceFS does on its etcd metadata engine for `mknod`
//! (its transactional KV layer over etcd): read the parent's attributes
//! and the new dentry (two linearizable gets, which JuiceFS's optimistic
//! transaction records with their revisions), then one etcd transaction
//! that commits only if neither changed (the parent's `mod_revision`, the
//! dentry absent) and writes the dentry, the new inode's attributes and the
//! parent's updated attributes; a conflict retries the whole thing, as
//! JuiceFS does. Inode numbers come from a client-side counter (JuiceFS
//! allocates them in batches, one etcd write per batch; left out). Keys
//! and value sizes follow JuiceFS's layout: `A<inode>I` -> 72-byte
//! attributes, `A<parent>D<name>` -> 9-byte dentry. Each of `--concurrency`
//! parent directories takes every `--concurrency`-th create, so concurrent
//! creates seldom conflict (a single parent would serialize them on its
//! attributes in etcd; NoKV's own bench uses one directory).
//!
//! A get is one linearizable range read of a file's attributes (what a
//! JuiceFS `stat` costs on etcd once the path is resolved).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::bench::{drive, print_report, BenchArgs, Workload};
use crate::GlobalArgs;

/// Most attempts of one create transaction before it counts as an error.
const MAX_ATTEMPTS: usize = 50;

fn attr_key(run: u64, inode: u64) -> Vec<u8> {
    format!("b{run:016x}A{inode:016x}I").into_bytes()
}

fn dentry_key(run: u64, parent: u64, name: &str) -> Vec<u8> {
    format!("b{run:016x}A{parent:016x}D{name}").into_bytes()
}

/// 72 bytes, as JuiceFS's encoded `Attr`.
fn attr_value(inode: u64) -> Vec<u8> {
    let mut v = vec![0u8; 72];
    v[..8].copy_from_slice(&inode.to_be_bytes());
    v
}

/// 9 bytes: type and inode.
fn dentry_value(inode: u64) -> Vec<u8> {
    let mut v = vec![1u8; 9];
    v[1..].copy_from_slice(&inode.to_be_bytes());
    v
}

fn etcd_error(e: etcd_client::Error) -> nokv_client::ClientError {
    nokv_client::ClientError::Server(format!("etcd: {e}"))
}

/// One JuiceFS-style create of `name` under `parent`.
async fn create(
    kv: &mut etcd_client::KvClient,
    run: u64,
    parent: u64,
    name: &str,
    inode: u64,
) -> Result<(), nokv_client::ClientError> {
    let parent_key = attr_key(run, parent);
    let dentry = dentry_key(run, parent, name);
    for _ in 0..MAX_ATTEMPTS {
        let parent_attr = kv.get(parent_key.clone(), None).await.map_err(etcd_error)?;
        let Some(parent_kv) = parent_attr.kvs().first() else {
            return Err(nokv_client::ClientError::Server(
                "etcd: the parent directory's attributes are missing".into(),
            ));
        };
        let parent_rev = parent_kv.mod_revision();
        let existing = kv.get(dentry.clone(), None).await.map_err(etcd_error)?;
        if !existing.kvs().is_empty() {
            return Err(nokv_client::ClientError::Server(format!(
                "etcd: {name} already exists"
            )));
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(parent_key.clone(), CompareOp::Equal, parent_rev),
                Compare::version(dentry.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(dentry.clone(), dentry_value(inode), None),
                TxnOp::put(attr_key(run, inode), attr_value(inode), None),
                TxnOp::put(parent_key.clone(), attr_value(parent), None),
            ]);
        if kv.txn(txn).await.map_err(etcd_error)?.succeeded() {
            return Ok(());
        }
    }
    Err(nokv_client::ClientError::Server(format!(
        "etcd: create {name} conflicted {MAX_ATTEMPTS} times"
    )))
}

/// `count` creates named `f<i>` over `concurrency` workers, each in parent
/// `1 + i mod parents`, taking inode numbers from `next_inode`.
async fn create_files(
    client: &etcd_client::Client,
    run: u64,
    parents: u64,
    next_inode: Arc<AtomicU64>,
    concurrency: usize,
    count: usize,
) -> anyhow::Result<crate::bench::Report> {
    let client = client.clone();
    drive(concurrency, count, move |i| {
        let mut kv = client.kv_client();
        let inode = next_inode.fetch_add(1, Ordering::Relaxed);
        async move {
            let parent = 1 + i as u64 % parents;
            create(&mut kv, run, parent, &format!("f{i}"), inode).await
        }
    })
    .await
}

pub async fn run(args: &BenchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> = args
        .etcd_endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let client = etcd_client::Client::connect(&endpoints, None)
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    let run = crate::bench::rand_u64();
    let parents = args.concurrency.max(1) as u64;
    // Inodes 1..=parents are the parent directories.
    let mut kv = client.kv_client();
    for parent in 1..=parents {
        kv.put(attr_key(run, parent), attr_value(parent), None)
            .await
            .context("writing the parent directories")?;
    }
    let next_inode = Arc::new(AtomicU64::new(parents + 1));
    match args.workload {
        Workload::EtcdCreate => {
            let report = create_files(
                &client,
                run,
                parents,
                next_inode,
                args.concurrency,
                args.count,
            )
            .await?;
            print_report("etcd-create", args, &report, g);
        }
        Workload::EtcdGet => {
            let files = args.files.max(1);
            let setup = create_files(
                &client,
                run,
                parents,
                next_inode,
                args.concurrency.max(16),
                files,
            )
            .await?;
            if setup.errors > 0 {
                anyhow::bail!("setup failed: {}", setup.first_error.unwrap_or_default());
            }
            let first = parents + 1;
            let report = drive(args.concurrency, args.count, move |i| {
                let mut kv = client.kv_client();
                let inode = first + (i.wrapping_mul(7919) % files) as u64;
                async move {
                    let got = kv
                        .get(attr_key(run, inode), None)
                        .await
                        .map_err(etcd_error)?;
                    if got.kvs().is_empty() {
                        return Err(nokv_client::ClientError::Server(format!(
                            "etcd: inode {inode} is missing"
                        )));
                    }
                    Ok(())
                }
            })
            .await?;
            print_report("etcd-get(linearizable)", args, &report, g);
        }
        other => anyhow::bail!("{other:?} is not an etcd workload"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_juicefs_sizes() {
        assert_eq!(attr_value(7).len(), 72);
        assert_eq!(dentry_value(7).len(), 9);
        assert_ne!(attr_key(1, 2), dentry_key(1, 2, ""));
        assert_ne!(attr_key(1, 2), attr_key(2, 2));
    }
}
