//! The gateway as an MCP server: the seven read verbs (and, with
//! `allow_writes`, the write tools) as MCP tools, and evidence URIs as MCP
//! resources (`nokv://{+path}`), over stdio ([`serve_stdio`]) or streamable
//! HTTP ([`http_router`], mounted at `/mcp`).
//!
//! Tool failures are tool results with `isError: true` and the text
//! `"<code>: <message>"`, never protocol errors, so that an agent reads what
//! went wrong and what to do instead. Only resource reads answer with MCP
//! errors (resource not found, invalid params, internal), as the protocol
//! asks.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, JsonObject, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::gateway::{base64, Evidence, Gateway};
use crate::verbs::ToolDef;

/// The server name MCP clients see.
pub const SERVER_NAME: &str = "nokv";

/// The URI template of evidence resources.
pub const EVIDENCE_TEMPLATE: &str = "nokv://{+path}";

/// The seven read verbs, offered by every gateway.
pub const READ_VERBS: [&str; 7] = ["ls", "stat", "catalog", "find", "aggregate", "read", "grep"];

/// Most top-level entries `resources/list` offers.
const LISTED_RESOURCES: u32 = 100;

/// How an agent should use the tools, sent with `initialize`.
const INSTRUCTIONS: &str = "\
NoKV is a metadata store shaped like a file system (runs, datasets, checkpoints, logs, configs); \
file bodies live in object storage. Use these tools to find and cite what is there.

Work from metadata to content:
1. catalog {path} first: which fields can be filtered under a path (built-ins such as size_bytes, \
mtime, generation, content_type; publish attributes; top-level keys of small JSON/YAML/CSV files), \
with their types and operators.
2. find {path, predicates, sort, fields} to select entries (e.g. predicates \
[{\"field\": \"status\", \"op\": \"eq\", \"value\": \"failed\"}]), and aggregate \
{path, measures, group_by} to count/sum/avg/min/max without listing everything. ls and stat \
for single directories and entries (stat shows a file's schema and sample records).
3. read and grep for content: read {path} returns structured records (JSON, JSONL, YAML, CSV, \
text lines) or, with format=bytes, a byte range; grep {path, pattern, recursive} finds lines.

Every entry, record and hit carries a `uri` such as nokv://runs/7/train.log@g3#L120 (the path, \
@g the generation it was read at, and a position: #L120, #L1-L9, #item:4, #bytes:0-99; \
?snapshot=ID when read at a snapshot). Cite these URIs as evidence; read {uri} or reading the \
resource resolves one to exactly the bytes it cites.

Results are bounded pages: when next_cursor is set, call again with the same arguments and \
cursor=next_cursor; narrow the path or add predicates rather than paging through everything. \
A failed call returns isError with \"<code>: <message>\"; the message says what to do instead \
(e.g. unknown_field: call catalog; too_many_records: page with offset).";

/// The description of the evidence resource template.
const EVIDENCE_DESCRIPTION: &str = "\
Evidence: exactly the bytes an item's `uri` cites. Forms: nokv://runs/7/train.log@g3#L120 (one \
line), nokv://runs/7/train.log@g3#L1-L9 (lines), nokv://runs/7/metrics.jsonl@g2#item:4 (one \
record, as JSON), nokv://runs/7/model.bin@g5#bytes:0-99 (a byte range), and \
nokv://runs/7/config.json?snapshot=12 (as of a snapshot). A path without a position is the whole \
body (at most 1 MiB); a directory is its first page of entries, as JSON.";

/// An MCP server over one [`Gateway`]: cheap to clone (each HTTP session
/// gets its own clone of the same gateway).
#[derive(Clone)]
pub struct McpServer {
    gateway: Arc<Gateway>,
}

impl McpServer {
    /// An MCP server answering with `gateway`.
    pub fn new(gateway: Gateway) -> McpServer {
        McpServer {
            gateway: Arc::new(gateway),
        }
    }

    /// The tools this server lists: one per gateway tool.
    pub fn tools(&self) -> Vec<Tool> {
        self.gateway.tools().iter().map(tool_from_def).collect()
    }

    /// Runs tool `name` on `arguments` (`None`: no arguments). Every
    /// failure, including an unknown tool and a panic inside a verb, is a
    /// result with `is_error` set.
    pub async fn call(&self, name: &str, arguments: Option<JsonObject>) -> CallToolResult {
        let args = arguments.map_or_else(|| json!({}), Json::Object);
        let outcome = AssertUnwindSafe(self.gateway.call(name, args))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(value)) => success_result(value),
            Ok(Err(e)) => error_result(&e),
            Err(_) => {
                tracing::error!(tool = name, "a gateway tool panicked");
                error_result(&GatewayError::Internal(format!(
                    "{name} failed inside the gateway (a bug, see its log); \
                     if it was a write, its outcome is unknown"
                )))
            }
        }
    }

    /// Resolves an evidence URI to resource contents.
    pub async fn read(&self, uri: &str) -> Result<ReadResourceResult, McpError> {
        let evidence = self
            .gateway
            .resolve(uri)
            .await
            .map_err(|e| resource_error(uri, &e))?;
        Ok(ReadResourceResult::new(vec![evidence_contents(
            uri, &evidence,
        )]))
    }

    /// The top-level entries (`ls /`, first page), as resources.
    async fn top_level(&self) -> Result<Vec<Resource>, GatewayError> {
        let listing = self
            .gateway
            .call("ls", json!({"path": "/", "limit": LISTED_RESOURCES}))
            .await?;
        let entries = listing["entries"].as_array().cloned().unwrap_or_default();
        Ok(entries.iter().filter_map(entry_resource).collect())
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.gateway
            .tools()
            .iter()
            .find(|t| t.name == name)
            .map(tool_from_def)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        Ok(self.call(&request.name, request.arguments).await.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        // A convenience for browsing clients: a cluster that cannot answer
        // now lists nothing rather than failing the client's start-up.
        let resources = match self.top_level().await {
            Ok(resources) => resources,
            Err(e) => {
                tracing::warn!("resources/list: ls / failed: {}: {e}", e.code());
                Vec::new()
            }
        };
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            evidence_template(),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.read(&request.uri).await.map(Into::into)
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin. Nothing but
/// MCP messages is written to stdout (logs go to stderr).
pub async fn serve_stdio(gateway: Gateway) -> Result<(), GatewayError> {
    let running = McpServer::new(gateway)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| GatewayError::Internal(format!("MCP over stdio did not start: {e}")))?;
    let reason = running
        .waiting()
        .await
        .map_err(|e| GatewayError::Internal(format!("MCP over stdio failed: {e}")))?;
    tracing::info!("MCP over stdio ended: {reason:?}");
    Ok(())
}

/// A router serving MCP streamable HTTP at `/mcp`. Requests must carry a
/// `Host` in `allowed_hosts` (when empty: loopback only, against DNS
/// rebinding). Cancelling `cancel` ends every session.
pub fn http_router(
    gateway: Gateway,
    allowed_hosts: Vec<String>,
    cancel: CancellationToken,
) -> axum::Router {
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(cancel);
    if !allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(allowed_hosts);
    }
    let server = McpServer::new(gateway);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service("/mcp", service)
}

// ----- conversions -----

/// One gateway tool as MCP lists it: the read verbs are read-only,
/// idempotent and closed-world; the write tools are not read-only, and
/// those that can replace or remove something are destructive.
fn tool_from_def(def: &ToolDef) -> Tool {
    let schema = match &def.input_schema {
        Json::Object(map) => map.clone(),
        // Every verb's schema is an object; anything else would be a bug in
        // verbs.rs, and MCP requires an object schema.
        _ => JsonObject::from_iter([("type".to_string(), json!("object"))]),
    };
    let annotations = if def.writes {
        ToolAnnotations::new()
            .read_only(false)
            .destructive(matches!(def.name, "publish_text" | "snapshot_remove"))
            .idempotent(false)
            .open_world(false)
    } else {
        ToolAnnotations::new()
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false)
    };
    Tool::new(def.name, def.description, Arc::new(schema)).with_annotations(annotations)
}

/// A successful call: the JSON as compact text and as structured content.
fn success_result(value: Json) -> CallToolResult {
    // Compact JSON: the model reads every byte of it as tokens (the same
    // text the HTTP API answers).
    let text = value.to_string();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

/// A failed call, as the agent sees it: `"<code>: <message>"`.
fn error_result(e: &GatewayError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("{}: {e}", e.code()))])
}

/// A failed resource read as an MCP error: not found for a missing path or
/// a generation no longer kept, invalid params for a request to fix,
/// internal for the cluster's or the gateway's trouble.
fn resource_error(uri: &str, e: &GatewayError) -> McpError {
    let message = format!("{}: {e}", e.code());
    let data = Some(json!({"uri": uri, "code": e.code()}));
    match e {
        GatewayError::NotFound(_) | GatewayError::Gone(_) => {
            McpError::resource_not_found(message, data)
        }
        GatewayError::Unavailable(_)
        | GatewayError::OutcomeUnknown(_)
        | GatewayError::Internal(_) => McpError::internal_error(message, data),
        _ => McpError::new(ErrorCode::INVALID_PARAMS, message, data),
    }
}

/// The cited bytes: text for `text/*` and JSON that is UTF-8, else base64.
fn evidence_contents(uri: &str, evidence: &Evidence) -> ResourceContents {
    let textual = evidence.mime.starts_with("text/") || evidence.mime == "application/json";
    match std::str::from_utf8(&evidence.bytes) {
        Ok(text) if textual => ResourceContents::text(text, uri),
        _ => ResourceContents::blob(base64(&evidence.bytes), uri),
    }
    .with_mime_type(evidence.mime.clone())
}

/// The `nokv://{+path}` template.
fn evidence_template() -> ResourceTemplate {
    ResourceTemplate::new(EVIDENCE_TEMPLATE, "evidence")
        .with_title("NoKV evidence")
        .with_description(EVIDENCE_DESCRIPTION)
}

/// One `ls` entry as a resource (its evidence URI); `None` if malformed.
fn entry_resource(entry: &Json) -> Option<Resource> {
    let uri = entry["uri"].as_str()?;
    let name = entry["name"].as_str()?;
    let kind = entry["kind"].as_str().unwrap_or("entry");
    let resource = Resource::new(uri, name);
    Some(if kind == "directory" {
        resource
            .with_description(format!(
                "directory {}",
                entry["path"].as_str().unwrap_or(name)
            ))
            .with_mime_type("application/json")
    } else {
        let size = entry["size_bytes"].as_u64().unwrap_or(0);
        resource
            .with_description(format!("{kind}, {size} bytes"))
            .with_size(size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use bytes::Bytes;
    use nokv_client::{Client, ClientConfig};

    /// A gateway whose cluster does not exist: enough for everything that
    /// fails before the network.
    fn server(allow_writes: bool) -> McpServer {
        let client = Client::new(ClientConfig::new(vec!["127.0.0.1:1".into()]))
            .expect("a client needs no connection to exist");
        McpServer::new(Gateway::new(
            client,
            GatewayConfig {
                allow_writes,
                ..GatewayConfig::default()
            },
        ))
    }

    fn text_of(result: &CallToolResult) -> String {
        result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect()
    }

    #[test]
    fn every_gateway_tool_is_listed_with_its_schema_and_hints() {
        for allow_writes in [false, true] {
            let server = server(allow_writes);
            let defs = server.gateway.tools();
            let tools = server.tools();
            assert_eq!(tools.len(), defs.len());
            for (tool, def) in tools.iter().zip(&defs) {
                assert_eq!(tool.name, def.name);
                assert_eq!(tool.description.as_deref(), Some(def.description));
                assert_eq!(Json::Object((*tool.input_schema).clone()), def.input_schema);
                let hints = tool.annotations.as_ref().expect("annotations");
                assert_eq!(hints.read_only_hint, Some(!def.writes), "{}", def.name);
            }
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
            for verb in READ_VERBS {
                assert!(names.contains(&verb), "{verb} missing from {names:?}");
            }
            assert_eq!(names.contains(&"publish_text"), allow_writes);
            assert_eq!(server.get_tool("grep").map(|t| t.name), Some("grep".into()));
            assert_eq!(server.get_tool("mkdir").is_some(), allow_writes);
        }
    }

    #[test]
    fn success_is_compact_text_and_structured_content() {
        let value = json!({"entries": [{"uri": "nokv://a@g1"}], "next_cursor": null});
        let result = success_result(value.clone());
        assert_eq!(result.is_error, Some(false));
        assert_eq!(result.structured_content, Some(value.clone()));
        let text = text_of(&result);
        assert!(!text.contains('\n'), "compact JSON: {text}");
        assert_eq!(
            serde_json::from_str::<Json>(&text).expect("JSON text"),
            value
        );
    }

    #[test]
    fn gateway_errors_are_tool_errors_with_their_code() {
        let result = error_result(&GatewayError::UnknownField("no field x".into()));
        assert_eq!(result.is_error, Some(true));
        assert_eq!(text_of(&result), "unknown_field: no field x");
        assert!(result.structured_content.is_none());
    }

    #[tokio::test]
    async fn failing_calls_are_tool_errors_not_protocol_errors() {
        let read_only = server(false);
        let cases = [
            ("no_such_tool", json!({}), "unknown_verb"),
            ("ls", json!({"path": "/", "bogus": 1}), "unknown_field"),
            ("ls", json!({"path": "/", "limit": 0}), "invalid_argument"),
            ("grep", json!({"path": "/"}), "invalid_argument"),
            (
                "publish_text",
                json!({"path": "/a", "text": "x"}),
                "writes_disabled",
            ),
        ];
        for (name, args, code) in cases {
            let Json::Object(args) = args else {
                unreachable!()
            };
            let result = read_only.call(name, Some(args)).await;
            assert_eq!(result.is_error, Some(true), "{name}");
            let text = text_of(&result);
            assert!(text.starts_with(&format!("{code}: ")), "{name}: {text}");
        }
        let result = read_only.call("stat", None).await;
        assert_eq!(result.is_error, Some(true));
        assert!(
            text_of(&result).starts_with("invalid_argument: "),
            "{}",
            text_of(&result)
        );
    }

    #[test]
    fn resource_errors_map_to_mcp_codes() {
        let uri = "nokv://a@g1#L1";
        let cases = [
            (
                GatewayError::NotFound("gone".into()),
                ErrorCode::RESOURCE_NOT_FOUND,
            ),
            (
                GatewayError::Gone("old".into()),
                ErrorCode::RESOURCE_NOT_FOUND,
            ),
            (
                GatewayError::BadUri("bad".into()),
                ErrorCode::INVALID_PARAMS,
            ),
            (
                GatewayError::LimitExceeded("big".into()),
                ErrorCode::INVALID_PARAMS,
            ),
            (
                GatewayError::Unavailable("down".into()),
                ErrorCode::INTERNAL_ERROR,
            ),
        ];
        for (e, code) in cases {
            let mcp = resource_error(uri, &e);
            assert_eq!(mcp.code, code, "{e:?}");
            assert!(mcp.message.starts_with(e.code()), "{}", mcp.message);
            assert_eq!(
                mcp.data.as_ref().map(|d| d["uri"].clone()),
                Some(json!(uri))
            );
        }
    }

    #[test]
    fn evidence_is_text_or_base64_by_mime() {
        let evidence = |mime: &str, bytes: &'static [u8]| Evidence {
            uri: "nokv://a@g1".into(),
            path: "/a".into(),
            generation: 1,
            mime: mime.into(),
            bytes: Bytes::from_static(bytes),
        };
        let uri = "nokv://a@g1#L2";
        match evidence_contents(uri, &evidence("text/plain", b"step 2 loss 0.5")) {
            ResourceContents::TextResourceContents {
                uri: u,
                text,
                mime_type,
                ..
            } => {
                assert_eq!((u.as_str(), text.as_str()), (uri, "step 2 loss 0.5"));
                assert_eq!(mime_type.as_deref(), Some("text/plain"));
            }
            other => panic!("text expected: {other:?}"),
        }
        assert!(matches!(
            evidence_contents(uri, &evidence("application/json", b"{\"a\":1}")),
            ResourceContents::TextResourceContents { .. }
        ));
        match evidence_contents(uri, &evidence("application/octet-stream", &[0xff, 0, 1])) {
            ResourceContents::BlobResourceContents {
                blob, mime_type, ..
            } => {
                assert_eq!(blob, "/wAB");
                assert_eq!(mime_type.as_deref(), Some("application/octet-stream"));
            }
            other => panic!("blob expected: {other:?}"),
        }
        // Not UTF-8 although labelled text: still a blob, never lossy text.
        assert!(matches!(
            evidence_contents(uri, &evidence("text/plain", &[0xff, 0xfe])),
            ResourceContents::BlobResourceContents { .. }
        ));
    }

    #[test]
    fn the_info_names_the_server_and_teaches_the_verbs() {
        let info = server(false).get_info();
        assert_eq!(info.server_info.name, "nokv");
        assert_eq!(info.server_info.version, env!("CARGO_PKG_VERSION"));
        assert!(info.capabilities.tools.is_some());
        assert!(info.capabilities.resources.is_some());
        let instructions = info.instructions.unwrap_or_default();
        for needle in [
            "catalog",
            "find",
            "aggregate",
            "grep",
            "next_cursor",
            "nokv://",
        ] {
            assert!(instructions.contains(needle), "instructions lack {needle}");
        }
        let template = evidence_template();
        assert_eq!(template.uri_template, "nokv://{+path}");
        assert_eq!(template.name, "evidence");
    }

    #[test]
    fn ls_entries_become_resources() {
        let dir =
            json!({"path": "/runs", "name": "runs", "kind": "directory", "uri": "nokv://runs@g4"});
        let file = json!({
            "path": "/a.txt", "name": "a.txt", "kind": "file",
            "size_bytes": 12, "uri": "nokv://a.txt@g2"
        });
        let dir = entry_resource(&dir).expect("dir");
        assert_eq!(
            (dir.uri.as_str(), dir.name.as_str()),
            ("nokv://runs@g4", "runs")
        );
        let file = entry_resource(&file).expect("file");
        assert_eq!(file.size, Some(12));
        assert!(entry_resource(&json!({"name": "x"})).is_none());
    }

    #[test]
    fn the_http_router_builds_with_and_without_allowed_hosts() {
        let gateway = || server(false).gateway.as_ref().clone();
        let _ = http_router(gateway(), Vec::new(), CancellationToken::new());
        let _ = http_router(
            gateway(),
            vec!["nokv.example".into()],
            CancellationToken::new(),
        );
    }
}
