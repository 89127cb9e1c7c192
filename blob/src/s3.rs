//! [`S3BlobStore`]: object bodies in an S3-compatible bucket, via `aws-sdk-s3`.
//!
//! This module is the only place in NoKV that touches `aws-sdk-s3` and `aws-config`; every
//! SDK error is turned into a [`BlobError`] here.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::keys::{clamp_range, validate_key, validate_prefix, MAX_KEY_LEN};
use crate::location::validate_bucket;
use crate::{BlobError, BlobLocation, BlobOp, BlobStore, ObjectMeta};

/// The default deadline of one [`S3BlobStore`] operation, SDK retries included.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// The region used when an endpoint is given but no region is (local S3 servers accept any).
const FALLBACK_REGION: &str = "us-east-1";

/// A static access key, instead of the AWS environment's credentials chain.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// How to reach a bucket. Unset fields fall back to the standard AWS environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; overrides `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Region; overrides `AWS_REGION`. Defaults to `us-east-1` when an endpoint is set and
    /// the environment names no region.
    pub region: Option<String>,
    /// Force path-style addressing. Always on when an endpoint is set.
    pub path_style: bool,
    /// Static credentials; `None` uses the AWS credentials chain.
    pub credentials: Option<S3Credentials>,
    /// Deadline of each operation (of each page, for `list`), SDK retries included; past it
    /// the call fails with [`BlobError::Timeout`].
    pub op_timeout: Duration,
    /// Objects per `ListObjectsV2` page (1 to 1000); `None` leaves it to the server
    /// (1000 on AWS). Small values are for tests of pagination.
    pub list_page_size: Option<u32>,
}

impl S3Config {
    /// A configuration for `bucket`/`prefix` with everything else from the environment.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            list_page_size: None,
        }
    }

    /// The configuration an `s3://` location describes (credentials from the environment,
    /// default timeout).
    pub fn from_location(location: &BlobLocation) -> Result<Self, BlobError> {
        match location {
            BlobLocation::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
            } => Ok(S3Config {
                endpoint: endpoint.clone(),
                region: region.clone(),
                path_style: *path_style,
                ..S3Config::new(bucket.clone(), prefix.clone())
            }),
            BlobLocation::Local { .. } => Err(BlobError::Config(format!(
                "{location} is not an s3:// location"
            ))),
        }
    }

    /// Checks the fields that can be checked without the network.
    pub fn validate(&self) -> Result<(), BlobError> {
        let url = format!("s3://{}/{}", self.bucket, self.prefix);
        validate_bucket(&url, &self.bucket)?;
        if !self.prefix.is_empty() {
            validate_key(&self.prefix)
                .map_err(|e| BlobError::Config(format!("bad S3 prefix {:?}: {e}", self.prefix)))?;
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(BlobError::Config(format!(
                    "S3 endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
        }
        if self.region.as_deref() == Some("") {
            return Err(BlobError::Config("empty S3 region".into()));
        }
        if self.op_timeout.is_zero() {
            return Err(BlobError::Config("S3 op_timeout must be positive".into()));
        }
        if let Some(size) = self.list_page_size {
            if !(1..=1000).contains(&size) {
                return Err(BlobError::Config(format!(
                    "S3 list_page_size must be 1 to 1000, not {size}"
                )));
            }
        }
        Ok(())
    }
}

/// A [`BlobStore`] on an S3-compatible service.
///
/// - `put_new` is `PutObject` with `If-None-Match: *`; HTTP 412 becomes
///   [`BlobError::AlreadyExists`]. Atomicity against concurrent writers is the server's
///   (AWS S3 guarantees it; some S3 look-alikes only check before writing).
/// - `get` with a range sends a `Range: bytes=a-b` header.
/// - Every operation runs under [`S3Config::op_timeout`] (SDK retries included; for `list`,
///   each page) and fails with [`BlobError::Timeout`] past it.
/// - 5xx, throttling, 409 conflicts of conditional writes and transport failures become
///   [`BlobError::Unavailable`] (retryable); other failures [`BlobError::Io`].
/// - The SDK retries transient failures itself (standard retry mode, 3 attempts). If a
///   `put_new` attempt lands but its response is lost, the SDK's retry gets 412, so the call
///   reports [`BlobError::AlreadyExists`] for the caller's own write; writers that retry use
///   [`put_new_or_same_size`](crate::put_new_or_same_size).
/// - HEAD responses carry no error body, so `head` in a missing bucket answers `None`.
#[derive(Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    /// `""` or the configured prefix followed by `/`.
    key_prefix: String,
    op_timeout: Duration,
    list_page_size: Option<i32>,
    location: BlobLocation,
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("location", &self.location.to_string())
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// Builds the SDK client. Does not contact the service (a missing bucket shows on the
    /// first operation, as [`BlobError::Io`]).
    pub async fn connect(config: S3Config) -> Result<Self, BlobError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                None,
                None,
                "nokv-static",
            ));
        }
        let sdk = loader.load().await;

        let endpoint = sdk.endpoint_url().map(str::to_owned);
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.path_style || endpoint.is_some());
        let region = match sdk.region() {
            Some(region) => region.to_string(),
            None if endpoint.is_some() => {
                builder = builder.region(Region::new(FALLBACK_REGION));
                FALLBACK_REGION.to_owned()
            }
            None => {
                return Err(BlobError::Config(format!(
                    "no AWS region for bucket {:?}: set AWS_REGION or add ?region=NAME to the \
                     location",
                    config.bucket
                )))
            }
        };
        let client = Client::from_conf(builder.build());

        let location = BlobLocation::S3 {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            endpoint,
            region: Some(region),
            path_style: config.path_style,
        };
        let list_page_size = config
            .list_page_size
            .map(|n| i32::try_from(n).expect("validate() keeps list_page_size <= 1000"));
        Ok(S3BlobStore {
            client,
            key_prefix: if config.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", config.prefix)
            },
            bucket: config.bucket,
            op_timeout: config.op_timeout,
            list_page_size,
            location,
        })
    }

    /// The object name of `key` in the bucket, checked against S3's length limit.
    fn object_name(&self, key: &str) -> Result<String, BlobError> {
        validate_key(key)?;
        let name = format!("{}{key}", self.key_prefix);
        if name.len() > MAX_KEY_LEN {
            return Err(BlobError::invalid_key(
                key,
                format!("longer than {MAX_KEY_LEN} bytes with the store's prefix"),
            ));
        }
        Ok(name)
    }

    /// Runs `fut` under the operation deadline.
    async fn timed<T>(
        &self,
        op: BlobOp,
        key: &str,
        fut: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BlobError::Timeout {
                op,
                key: key.to_owned(),
            }),
        }
    }

    async fn get_inner(
        &self,
        key: &str,
        name: String,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, BlobError> {
        const OP: BlobOp = BlobOp::Get;
        let mut request = self.client.get_object().bucket(&self.bucket).key(&name);
        if let Some(range) = &range {
            // Servers reject positions past i64::MAX; no object is that large anyway.
            const MAX_POS: u64 = i64::MAX as u64;
            if range.start >= range.end || range.start > MAX_POS {
                // No bytes can come back, and S3 cannot express an empty range: only check
                // that the object exists.
                return match self.head_inner(key, name).await? {
                    Some(_) => Ok(Bytes::new()),
                    None => Err(BlobError::NotFound {
                        key: key.to_owned(),
                    }),
                };
            }
            request = request.range(if range.end - 1 > MAX_POS {
                format!("bytes={}-", range.start)
            } else {
                format!("bytes={}-{}", range.start, range.end - 1)
            });
        }
        let output = match request.send().await {
            Ok(output) => output,
            // 416: the range starts at or past the end of an existing object.
            Err(err) if range.is_some() && status(&err) == Some(416) => return Ok(Bytes::new()),
            Err(err) => return Err(map_sdk_error(OP, key, err)),
        };
        let partial = output.content_range().is_some();
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| BlobError::unavailable(OP, key, DisplayErrorContext(&e)))?
            .into_bytes();
        match range {
            // A server that ignored the Range header sent the whole object: cut it here.
            Some(range) if !partial => {
                let r = clamp_range(range, body.len() as u64);
                let (start, end) = (to_usize(OP, key, r.start)?, to_usize(OP, key, r.end)?);
                Ok(body.slice(start..end))
            }
            _ => Ok(body),
        }
    }

    async fn head_inner(&self, key: &str, name: String) -> Result<Option<u64>, BlobError> {
        const OP: BlobOp = BlobOp::Head;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(name)
            .send()
            .await
        {
            Ok(output) => {
                let len = output
                    .content_length()
                    .ok_or_else(|| BlobError::io(OP, key, "HeadObject without Content-Length"))?;
                u64::try_from(len)
                    .map(Some)
                    .map_err(|_| BlobError::io(OP, key, format!("negative Content-Length {len}")))
            }
            Err(err) => match map_sdk_error(OP, key, err) {
                BlobError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list_inner(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        const OP: BlobOp = BlobOp::List;
        let full_prefix = format!("{}{prefix}", self.key_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_max_keys(self.list_page_size)
                .set_continuation_token(token.take());
            let page = self
                .timed(OP, prefix, async {
                    request
                        .send()
                        .await
                        .map_err(|err| map_sdk_error(OP, prefix, err))
                })
                .await?;
            for object in page.contents() {
                let name = object
                    .key()
                    .ok_or_else(|| BlobError::io(OP, prefix, "listed object without a key"))?;
                let key = name.strip_prefix(&self.key_prefix).ok_or_else(|| {
                    BlobError::io(OP, prefix, format!("listed {name:?} outside the prefix"))
                })?;
                let size = object.size().unwrap_or(0);
                let size = u64::try_from(size).map_err(|_| {
                    BlobError::io(OP, prefix, format!("listed {name:?} with size {size}"))
                })?;
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size,
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            match page.next_continuation_token() {
                Some(next) => token = Some(next.to_owned()),
                None => {
                    return Err(BlobError::io(
                        OP,
                        prefix,
                        "truncated ListObjectsV2 page without a continuation token",
                    ))
                }
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }
}

#[async_trait::async_trait]
impl BlobStore for S3BlobStore {
    async fn put_new(&self, key: &str, body: Bytes) -> Result<(), BlobError> {
        const OP: BlobOp = BlobOp::PutNew;
        let name = self.object_name(key)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(name)
            .if_none_match("*")
            .body(ByteStream::from(body));
        self.timed(OP, key, async {
            request
                .send()
                .await
                .map(|_| ())
                .map_err(|err| map_sdk_error(OP, key, err))
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, BlobError> {
        let name = self.object_name(key)?;
        self.timed(BlobOp::Get, key, self.get_inner(key, name, range))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let name = self.object_name(key)?;
        self.timed(BlobOp::Head, key, self.head_inner(key, name))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        const OP: BlobOp = BlobOp::Delete;
        let name = self.object_name(key)?;
        let request = self.client.delete_object().bucket(&self.bucket).key(name);
        self.timed(OP, key, async {
            match request.send().await {
                Ok(_) => Ok(()),
                Err(err) => match map_sdk_error(OP, key, err) {
                    BlobError::NotFound { .. } => Ok(()),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        validate_prefix(prefix)?;
        // The deadline applies to each page, so long listings are not cut short.
        self.list_inner(prefix).await
    }

    fn location(&self) -> BlobLocation {
        self.location.clone()
    }
}

fn to_usize(op: BlobOp, key: &str, n: u64) -> Result<usize, BlobError> {
    usize::try_from(n).map_err(|_| BlobError::io(op, key, "offset does not fit in memory"))
}

/// The HTTP status of a service error, if the server answered.
fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The one place SDK errors become [`BlobError`]s.
fn map_sdk_error<E>(op: BlobOp, key: &str, err: SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status(&err);
    let message = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::TimeoutError(_) => BlobError::Timeout {
            op,
            key: key.to_owned(),
        },
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BlobError::unavailable(op, key, message)
        }
        SdkError::ConstructionFailure(_) => BlobError::Config(format!(
            "cannot build the S3 request for {op} {key:?}: {message}"
        )),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            match (code, status) {
                ("NoSuchBucket", _) => BlobError::io(op, key, message),
                ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => BlobError::NotFound {
                    key: key.to_owned(),
                },
                (_, Some(412)) if op == BlobOp::PutNew => BlobError::AlreadyExists {
                    key: key.to_owned(),
                },
                // A concurrent conditional write to the same key is in flight: retry, and
                // the retry sees 412 if the other writer won.
                (_, Some(409)) if op == BlobOp::PutNew => BlobError::unavailable(op, key, message),
                ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout", _)
                | (_, Some(429 | 500..=599)) => BlobError::unavailable(op, key, message),
                _ => BlobError::io(op, key, message),
            }
        }
        _ => BlobError::io(op, key, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_location_and_validate() {
        let location = BlobLocation::parse("s3://nokv/a/b?endpoint=http://127.0.0.1:1&region=r")
            .expect("parse");
        let config = S3Config::from_location(&location).expect("config");
        assert_eq!(config.bucket, "nokv");
        assert_eq!(config.prefix, "a/b");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(config.op_timeout, DEFAULT_OP_TIMEOUT);
        assert_eq!(config.validate(), Ok(()));

        let local = BlobLocation::parse("/tmp/x").expect("parse");
        assert_eq!(
            S3Config::from_location(&local).unwrap_err().code(),
            "BLOB_CONFIG"
        );
        let bad = [
            S3Config {
                list_page_size: Some(0),
                ..config.clone()
            },
            S3Config {
                op_timeout: Duration::ZERO,
                ..config.clone()
            },
            S3Config {
                endpoint: Some("127.0.0.1:9000".into()),
                ..config.clone()
            },
            S3Config::new("B", ""),
        ];
        for config in bad {
            assert_eq!(config.validate().unwrap_err().code(), "BLOB_CONFIG");
        }
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let creds = S3Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "very-secret".into(),
        };
        assert!(!format!("{creds:?}").contains("very-secret"));
    }

    #[tokio::test]
    async fn location_reports_endpoint_region_and_prefix() {
        let config = S3Config {
            endpoint: Some("http://127.0.0.1:1".into()),
            credentials: Some(S3Credentials {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
            }),
            region: Some("eu-west-1".into()),
            ..S3Config::new("nokv", "p")
        };
        let store = S3BlobStore::connect(config).await.expect("connect");
        assert_eq!(
            store.location().to_string(),
            "s3://nokv/p?endpoint=http://127.0.0.1:1&region=eu-west-1"
        );
        let long = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            store.head(&long).await.unwrap_err().code(),
            "BLOB_INVALID_KEY"
        );
    }
}
