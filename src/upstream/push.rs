//! The write side of the OCI distribution API against one upstream (for upstreams with
//! `push = true`): upload sessions (`POST`, `PATCH`, `PUT ?digest=`, `DELETE`), blob mounts,
//! manifest puts and deletes, each with the edge's own credentials and a token for
//! `repository:<repo>:pull,push`.
//!
//! Owns: following the upstream's `Location` from one request of a session to the next
//! (only on the endpoint the session started on, never to another origin, so our
//! credentials never leave it), streaming request bodies (a [`reqwest::Body`] made by the
//! caller; nothing is buffered here), and turning refusals into [`PushError::Refused`]
//! with the upstream's OCI error code, so the client sees what the upstream said.
//!
//! A request whose body is a stream cannot be sent twice, so it is sent with the
//! credentials the upstream already asked for (learned by the session's bodiless `POST`);
//! bodiless requests and manifests (small, kept in memory) get the usual one retry after a
//! 401 challenge.
//!
//! Must not: verify digests, keep upload state between calls (the caller holds the
//! [`UpstreamUpload`]), or store anything.

use super::error::{error_message, read_error_body};
use super::transport::{self, RequestKind};
use super::{challenge, Upstream, UpstreamError};
use crate::oci::{Digest, RepositoryName};
use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, StatusCode, Url};

/// Longest error body read from a refusal.
const REFUSAL_BODY_LIMIT: usize = 16 << 10;

/// An upload session on the upstream: the endpoint it lives on and where it continues (the
/// latest `Location`).
#[derive(Clone, Debug)]
pub struct UpstreamUpload {
    endpoint: usize,
    url: Url,
    repo: RepositoryName,
}

impl UpstreamUpload {
    /// The session's current URL (for logs; it may carry upstream state in its query).
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// What a cross-repository mount request came to.
#[derive(Debug)]
pub enum MountOutcome {
    /// The upstream linked the blob into the repository (201).
    Mounted,
    /// The upstream could not mount it and opened an upload session instead (202).
    Upload(UpstreamUpload),
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No usable answer: connection, timeout, TLS, credentials, rate limit.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream answered and refused: its status, OCI error code and message.
    #[error("upstream answered HTTP {status}: {message}")]
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

impl PushError {
    /// The HTTP status the upstream refused with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PushError::Refused { status, .. } => Some(*status),
            PushError::Upstream(UpstreamError::NotFound) => Some(404),
            PushError::Upstream(UpstreamError::Unauthorized { status }) => Some(*status),
            _ => None,
        }
    }
}

/// The token scope a push to `repo` needs.
fn push_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull,push")
}

/// A refusal: the status, and the first OCI error code and message of the body.
async fn refused(response: reqwest::Response) -> PushError {
    let status = response.status();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
            return PushError::Upstream(UpstreamError::from_response(response).await);
        }
        _ => {}
    }
    let body = read_error_body(response).await;
    let body = &body[..body.len().min(REFUSAL_BODY_LIMIT)];
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string));
    PushError::Refused {
        status: status.as_u16(),
        code,
        message: error_message(body).unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string()
        }),
    }
}

impl Upstream {
    fn push_client(&self, endpoint: usize) -> &reqwest::Client {
        let reach = &self.inner.reach[endpoint];
        reach.push_client.as_ref().unwrap_or(&reach.client)
    }

    /// The session's next URL from a response's `Location`, resolved against `base`; it must
    /// stay on the endpoint's origin.
    fn next_location(
        &self,
        endpoint: usize,
        base: &Url,
        response: &reqwest::Response,
    ) -> Result<Url, PushError> {
        let text = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                UpstreamError::BadResponse("upload answer without a Location header".into())
            })?;
        let url = base.join(text).map_err(|e| {
            UpstreamError::BadResponse(format!("upload Location {text:?} is not a URL: {e}"))
        })?;
        let origin = &self.inner.endpoints.get(endpoint).url;
        if url.origin() != origin.origin() {
            return Err(UpstreamError::BadResponse(format!(
                "upload Location points at another server ({}); not following it with our credentials",
                url.origin().ascii_serialization()
            ))
            .into());
        }
        Ok(url)
    }

    /// Sends a request with a body that can be sent again (none, or bytes in memory), with
    /// one retry after a 401 challenge.
    async fn push_request(
        &self,
        endpoint: usize,
        method: Method,
        url: &Url,
        scope: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, PushError> {
        let reach = &self.inner.reach[endpoint];
        let build = |auth: Option<&HeaderValue>| {
            let mut r = self
                .push_client(endpoint)
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a.clone());
            }
            match &body {
                Some(b) => r.body(b.clone()),
                None => r.header(CONTENT_LENGTH, 0),
            }
        };
        let proactive = reach.auth.proactive(&reach.client, scope).await?;
        let metrics = &self.inner.metrics;
        let first = transport::send(metrics, RequestKind::Push, build(proactive.as_ref())).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenges = challenge::of_headers(first.headers());
        drop(first);
        let retry = reach
            .auth
            .answer(&reach.client, &challenges, scope, proactive.as_ref())
            .await?;
        Ok(transport::send(metrics, RequestKind::Push, build(Some(&retry))).await?)
    }

    /// The endpoint pushes go to: the first one in use.
    fn push_endpoint(&self) -> usize {
        self.inner
            .endpoints
            .order(None)
            .first()
            .copied()
            .unwrap_or(0)
    }

    fn repo_url(&self, endpoint: usize, path: &str, query: Option<&str>) -> Result<Url, PushError> {
        Ok(self.url_at(endpoint, path, query)?)
    }

    /// `POST /v2/<repo>/blobs/uploads/[?<query>]` on the push endpoint: (the endpoint, the
    /// URL, the response).
    async fn post_uploads(
        &self,
        repo: &RepositoryName,
        query: Option<&str>,
    ) -> Result<(usize, Url, reqwest::Response), PushError> {
        let endpoint = self.push_endpoint();
        let url = self.repo_url(endpoint, &format!("v2/{repo}/blobs/uploads/"), query)?;
        let response = self
            .push_request(
                endpoint,
                Method::POST,
                &url,
                &push_scope(repo),
                HeaderMap::new(),
                None,
            )
            .await?;
        Ok((endpoint, url, response))
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens an upload session (202).
    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UpstreamUpload, PushError> {
        let (endpoint, url, response) = self.post_uploads(repo, None).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(refused(response).await);
        }
        Ok(UpstreamUpload {
            endpoint,
            url: self.next_location(endpoint, &url, &response)?,
            repo: repo.clone(),
        })
    }

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`.
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        from: &RepositoryName,
    ) -> Result<MountOutcome, PushError> {
        let query = format!("mount={digest}&from={from}");
        let (endpoint, url, response) = self.post_uploads(repo, Some(&query)).await?;
        match response.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => Ok(MountOutcome::Upload(UpstreamUpload {
                endpoint,
                url: self.next_location(endpoint, &url, &response)?,
                repo: repo.clone(),
            })),
            _ => Err(refused(response).await),
        }
    }

    /// `PATCH` of one chunk, streamed: bytes `start..start+len` of the blob when the length
    /// is known (sent with `Content-Range`), else the rest of the stream appended.
    /// Returns the session's next URL.
    pub async fn upload_chunk(
        &self,
        upload: &UpstreamUpload,
        body: reqwest::Body,
        start: u64,
        len: Option<u64>,
    ) -> Result<UpstreamUpload, PushError> {
        let endpoint = upload.endpoint;
        let reach = &self.inner.reach[endpoint];
        let auth = reach
            .auth
            .proactive(&reach.client, &push_scope(&upload.repo))
            .await?;
        let mut request = self
            .push_client(endpoint)
            .patch(upload.url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(len) = len.filter(|&l| l > 0) {
            request = request
                .header(CONTENT_LENGTH, len)
                .header(CONTENT_RANGE, format!("{}-{}", start, start + len - 1));
        }
        if let Some(a) = auth {
            request = request.header(AUTHORIZATION, a);
        }
        let response = transport::send(&self.inner.metrics, RequestKind::Push, request).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(refused(response).await);
        }
        Ok(UpstreamUpload {
            endpoint,
            url: self.next_location(endpoint, &upload.url, &response)?,
            repo: upload.repo.clone(),
        })
    }

    /// `PUT <session>?digest=<digest>` without a body: closes the session (201).
    pub async fn finish_upload(
        &self,
        upload: &UpstreamUpload,
        digest: &Digest,
    ) -> Result<(), PushError> {
        let mut url = upload.url.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .push_request(
                upload.endpoint,
                Method::PUT,
                &url,
                &push_scope(&upload.repo),
                HeaderMap::new(),
                None,
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(refused(response).await);
        }
        Ok(())
    }

    /// `DELETE <session>`: cancels the session (errors are only logged: the upstream's own
    /// expiry cleans up what we could not).
    pub async fn cancel_upload(&self, upload: &UpstreamUpload) {
        let result = self
            .push_request(
                upload.endpoint,
                Method::DELETE,
                &upload.url,
                &push_scope(&upload.repo),
                HeaderMap::new(),
                None,
            )
            .await;
        match result {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                tracing::debug!(upstream = %self.inner.name, repo = %upload.repo, status = r.status().as_u16(), "upstream upload session cancelled");
            }
            Ok(r) => {
                tracing::warn!(upstream = %self.inner.name, repo = %upload.repo, status = r.status().as_u16(), "upstream did not cancel an abandoned upload session; its own expiry will");
            }
            Err(e) => {
                tracing::warn!(upstream = %self.inner.name, repo = %upload.repo, error = %e, "cannot cancel an abandoned upload session upstream; its own expiry will");
            }
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the manifest's bytes (201). Returns the
    /// upstream's `Docker-Content-Digest`, if it sent a valid one.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Option<Digest>, PushError> {
        let endpoint = self.push_endpoint();
        let url = self.repo_url(endpoint, &format!("v2/{repo}/manifests/{reference}"), None)?;
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            headers.insert(CONTENT_TYPE, v);
        }
        let response = self
            .push_request(
                endpoint,
                Method::PUT,
                &url,
                &push_scope(repo),
                headers,
                Some(bytes),
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(refused(response).await);
        }
        Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// `DELETE /v2/<repo>/manifests/<reference>` or `/blobs/<digest>` (`what` is the path
    /// after the repository). 202 is success; anything else is the upstream's refusal.
    pub async fn delete(&self, repo: &RepositoryName, what: &str) -> Result<(), PushError> {
        let endpoint = self.push_endpoint();
        let url = self.repo_url(endpoint, &format!("v2/{repo}/{what}"), None)?;
        let response = self
            .push_request(
                endpoint,
                Method::DELETE,
                &url,
                &push_scope(repo),
                HeaderMap::new(),
                None,
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(refused(response).await)
    }

    /// `HEAD /v2/<repo>/blobs/<digest>` with the push scope: the blob's size if the
    /// repository has it.
    pub async fn pushed_blob_size(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>, PushError> {
        let endpoint = self.push_endpoint();
        let url = self.repo_url(endpoint, &format!("v2/{repo}/blobs/{digest}"), None)?;
        let response = self
            .push_request(
                endpoint,
                Method::HEAD,
                &url,
                &push_scope(repo),
                HeaderMap::new(),
                None,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(transport::content_length(response.headers())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(refused(response).await),
        }
    }
}
