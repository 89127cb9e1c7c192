//! `nokv gateway` (the agent verbs over HTTP/JSON and MCP on one listener)
//! and `nokv mcp` (MCP over stdio, for agents that start their tools).

use clap::Args;
use nokv_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::GlobalArgs;

/// Limits and switches both front doors share.
#[derive(Args, Debug, Clone)]
pub struct GatewayOptions {
    /// Offer the write tools (publish_text, mkdir, snapshot_create,
    /// snapshot_remove); without it the gateway is read-only.
    #[arg(long, env = "NOKV_GATEWAY_ALLOW_WRITES")]
    pub allow_writes: bool,
    /// Most entries find, aggregate, catalog and grep walk in one call
    /// (a larger subtree is refused with scan_limit).
    #[arg(long, default_value_t = 100_000)]
    pub max_scan_entries: usize,
    /// Most body bytes one call reads from the object store.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub max_bytes_per_call: u64,
    /// Longest one call may take, e.g. 60s (deadline_exceeded after).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub call_timeout: std::time::Duration,
    /// Calls served at once; more wait for a turn (within the timeout).
    #[arg(long, default_value_t = 32)]
    pub max_concurrent_calls: usize,
    /// Never read the shards' field indexes: find and aggregate walk the
    /// subtree (for comparison and debugging; answers are the same).
    #[arg(long, env = "NOKV_GATEWAY_NO_INDEX")]
    pub no_index: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  nokv gateway --listen 127.0.0.1:7480
  curl -s -X POST 127.0.0.1:7480/v1/ls -d '{\"path\": \"/runs\"}'
  curl -s -X POST 127.0.0.1:7480/v1/find -d '{\"path\": \"/runs\", \"predicates\": [{\"field\": \"step\", \"op\": \"gte\", \"value\": 100}]}'
  # MCP clients: http://127.0.0.1:7480/mcp (see docs/mcp.md)")]
pub struct GatewayArgs {
    /// Address to serve HTTP on: POST /v1/<verb>, GET /v1/tools, GET
    /// /healthz, and MCP (streamable HTTP) at /mcp.
    #[arg(long, env = "NOKV_GATEWAY_LISTEN", default_value = "127.0.0.1:7480")]
    pub listen: String,
    /// Host names MCP requests may carry in their Host header besides
    /// loopback (needed when serving beyond this machine), repeatable.
    #[arg(
        long = "allowed-host",
        env = "NOKV_GATEWAY_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    #[command(flatten)]
    pub options: GatewayOptions,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Example (an MCP client's server entry):
  command: nokv   args: [\"mcp\", \"--endpoints\", \"127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403\"]")]
pub struct McpArgs {
    #[command(flatten)]
    pub options: GatewayOptions,
}

fn gateway(options: &GatewayOptions, g: &GlobalArgs) -> anyhow::Result<Gateway> {
    let config = GatewayConfig {
        max_scan_entries: options.max_scan_entries,
        max_bytes_per_call: options.max_bytes_per_call,
        allow_writes: options.allow_writes,
        call_timeout: options.call_timeout,
        max_concurrent_calls: options.max_concurrent_calls,
        use_indexes: !options.no_index,
        ..GatewayConfig::default()
    };
    Ok(Gateway::new(g.client()?, config))
}

pub async fn serve(args: GatewayArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let gateway = gateway(&args.options, g)?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    eprintln!(
        "nokv gateway on http://{local} (POST /v1/<verb>, MCP at /mcp){}",
        if args.options.allow_writes {
            ", writes allowed"
        } else {
            ", read-only"
        }
    );
    let stop = CancellationToken::new();
    crate::serve::cancel_on_signal(stop.clone());
    let mut allowed = args.allowed_hosts;
    if !allowed.is_empty() {
        allowed.extend([
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ]);
    }
    nokv_gateway::http::serve(
        listener,
        gateway,
        allowed,
        async move { stop.cancelled().await },
    )
    .await?;
    Ok(())
}

pub async fn mcp(args: McpArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let gateway = gateway(&args.options, g)?;
    nokv_gateway::mcp::serve_stdio(gateway).await?;
    Ok(())
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  nokv agent ls '{\"path\": \"/runs\"}'
  nokv agent find '{\"path\": \"/runs\", \"predicates\": [{\"field\": \"status\", \"op\": \"eq\", \"value\": \"failed\"}], \"fields\": [\"lr\"]}'
  nokv agent read '{\"uri\": \"nokv://runs/7/train.log@g3#L120\"}'")]
pub struct AgentArgs {
    /// ls, stat, catalog, find, aggregate, read or grep (or, with
    /// --allow-writes, publish_text, mkdir, snapshot_create, snapshot_remove).
    pub verb: String,
    /// The verb's arguments as a JSON object (`-` reads it from stdin).
    #[arg(default_value = "{}")]
    pub args: String,
    #[command(flatten)]
    pub options: GatewayOptions,
}

/// One verb, in-process (no gateway needed): the JSON result on stdout.
pub async fn agent(args: AgentArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let text = if args.args == "-" {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut text).await?;
        text
    } else {
        args.args
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the arguments are not JSON: {e}"))?;
    let gateway = gateway(&args.options, g)?;
    match gateway.call(&args.verb, json).await {
        Ok(out) => {
            let text = if g.json {
                out.to_string()
            } else {
                serde_json::to_string_pretty(&out)?
            };
            outln!("{text}");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", e.code())),
    }
}
