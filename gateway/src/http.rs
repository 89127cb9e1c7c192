//! HTTP/JSON: `POST /v1/<verb>` with the verb's arguments as the JSON body
//! answers the verb's JSON result, or an error as an HTTP status plus
//! `{"error": {"code", "message"}}`. `GET /v1/tools` lists the verbs and
//! their schemas, `GET /healthz` answers `ok`, `GET /metrics` the
//! Prometheus metrics, and `/mcp` is MCP over streamable HTTP on the same
//! listener.

use std::future::Future;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::gateway::Gateway;

/// Largest request body (a `publish_text` of 1 MiB fits, JSON-escaped).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The gateway's routes: the verbs, the tool list, health, and MCP.
pub fn router(gateway: Gateway, allowed_hosts: Vec<String>, cancel: CancellationToken) -> Router {
    let verbs = Router::new()
        .route("/v1/tools", get(tools))
        .route("/v1/{verb}", post(verb))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(gateway.clone());
    verbs.merge(crate::mcp::http_router(gateway, allowed_hosts, cancel))
}

/// Serves `router` on an already-bound listener until `shutdown` resolves
/// (in-flight requests finish first).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    allowed_hosts: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let app = router(gateway, allowed_hosts, cancel.clone());
    let stop = cancel.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

async fn tools(State(gateway): State<Gateway>) -> Response {
    let list: Vec<_> = gateway
        .tools()
        .into_iter()
        .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema, "writes": t.writes}))
        .collect();
    json_response(StatusCode::OK, &json!({ "tools": list }))
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics().render(),
    )
        .into_response()
}

async fn verb(State(gateway): State<Gateway>, Path(verb): Path<String>, body: Bytes) -> Response {
    let started = Instant::now();
    let result = match parse_body(&body) {
        Ok(args) => gateway.call(&verb, args).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(out) => {
            tracing::debug!(verb = %verb, elapsed_ms = started.elapsed().as_millis() as u64, "verb answered");
            json_response(StatusCode::OK, &out)
        }
        Err(e) => {
            tracing::debug!(verb = %verb, code = e.code(), "verb refused: {e}");
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, &e.to_json())
        }
    }
}

/// The request body as a JSON object (an empty body is `{}`).
fn parse_body(body: &[u8]) -> Result<serde_json::Value, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidArgument(format!("request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(GatewayError::InvalidArgument(
            "request body must be a JSON object of the verb's arguments".into(),
        ));
    }
    Ok(value)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_json_objects() {
        assert_eq!(parse_body(b"").expect("empty"), json!({}));
        assert_eq!(
            parse_body(b" {\"path\":\"/\"} ").expect("object"),
            json!({"path": "/"})
        );
        assert_eq!(
            parse_body(b"[1]").expect_err("array").code(),
            "invalid_argument"
        );
        assert_eq!(
            parse_body(b"\xff\x00garbage").expect_err("garbage").code(),
            "invalid_argument"
        );
    }
}
