//! How one request reaches an upstream: the walk over its endpoints (failover on connect
//! errors, timeouts, TLS failures, 5xx and 429), short rate limits waited out and retried,
//! the auth flow around each attempt, and the background prober that puts failed
//! endpoints back in use.
//!
//! Must not: interpret registry answers beyond what failover and rate limits need (the
//! request methods in `mod.rs` do), or decide endpoint order (`endpoints` does).

use super::transport::{self, RequestKind};
use super::{challenge, error, Reach, Upstream, UpstreamError, MAX_RATE_LIMIT_RETRIES};
use crate::oci::RepositoryName;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use std::sync::Arc;
use std::time::Duration;

/// The token scope of a pull from `repo`.
pub(super) fn pull_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull")
}

impl Upstream {
    /// Every `backoff`, pings the endpoints that are down and puts back those that answer.
    /// Runs while any clone of this upstream lives (and only inside a tokio runtime).
    pub(super) fn spawn_prober(&self, backoff: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let backoff = backoff.max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(backoff).await;
                let Some(inner) = weak.upgrade() else { return };
                let upstream = Upstream { inner };
                for i in 0..upstream.inner.endpoints.len() {
                    if upstream.inner.endpoints.is_down(i)
                        && upstream.ping_endpoint(i).await.is_ok()
                    {
                        upstream.inner.endpoints.mark_up(i, "it answered a probe");
                    }
                }
            }
        });
    }

    pub(super) async fn ping_endpoint(&self, i: usize) -> Result<(), UpstreamError> {
        let url = self.url_at(i, "v2/", None)?;
        let request = self.inner.reach[i].client.get(url);
        let response = transport::send(&self.inner.metrics, RequestKind::Ping, request).await?;
        if response.status().is_success() || response.status() == StatusCode::UNAUTHORIZED {
            return Ok(());
        }
        Err(UpstreamError::from_response(response).await)
    }

    pub(super) fn url_at(
        &self,
        i: usize,
        path: &str,
        query: Option<&str>,
    ) -> Result<Url, UpstreamError> {
        let mut url =
            self.inner.endpoints.get(i).url.join(path).map_err(|e| {
                UpstreamError::BadResponse(format!("cannot build URL for {path}: {e}"))
            })?;
        if query.is_some() {
            url.set_query(query);
        }
        Ok(url)
    }

    /// Sends a request to the endpoints in turn (see [`Upstream::send_to_endpoints`]); a
    /// 429, or a 503 with `Retry-After`, from the last one tried is waited out and retried
    /// while the waits add up to no more than `[outbound] max_rate_limit_wait` (at most
    /// [`MAX_RATE_LIMIT_RETRIES`] times). Returns the final response whatever its status,
    /// and the index of the endpoint that sent it.
    pub(super) async fn send(
        &self,
        kind: RequestKind,
        method: Method,
        (path, query): (&str, Option<&str>),
        repo: &RepositoryName,
        headers: HeaderMap,
        prefer: Option<usize>,
    ) -> Result<(reqwest::Response, usize), UpstreamError> {
        let scope = pull_scope(repo);
        self.send_scoped(kind, method, (path, query), repo, &scope, headers, prefer)
            .await
    }

    /// [`Upstream::send`] with the token scope to ask for (`repository:<repo>:pull,push`
    /// for pushes).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_scoped(
        &self,
        kind: RequestKind,
        method: Method,
        (path, query): (&str, Option<&str>),
        repo: &RepositoryName,
        scope: &str,
        headers: HeaderMap,
        prefer: Option<usize>,
    ) -> Result<(reqwest::Response, usize), UpstreamError> {
        let mut waited = Duration::ZERO;
        let mut retries = 0;
        loop {
            let (response, endpoint) = self
                .send_to_endpoints(kind, &method, (path, query), repo, scope, &headers, prefer)
                .await?;
            let status = response.status();
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok((response, endpoint));
            }
            let Some(wait) = error::retry_after(response.headers()) else {
                return Ok((response, endpoint));
            };
            if retries == MAX_RATE_LIMIT_RETRIES || waited + wait > self.inner.max_rate_limit_wait {
                return Ok((response, endpoint));
            }
            transport::discard(response).await;
            tracing::info!(
                upstream = %self.inner.name,
                %repo,
                status = status.as_u16(),
                "upstream asked us to wait {} ms; retrying after the wait",
                wait.as_millis()
            );
            self.inner.metrics.rate_limit_wait();
            tokio::time::sleep(wait).await;
            waited += wait;
            retries += 1;
        }
    }

    /// Sends a request to each endpoint in use, in order, until one gives an answer that
    /// is not an endpoint failure (connect error, timeout, TLS failure, 5xx, 429); each
    /// failure marks its endpoint down. The last endpoint's answer is returned as it is.
    #[allow(clippy::too_many_arguments)]
    async fn send_to_endpoints(
        &self,
        kind: RequestKind,
        method: &Method,
        (path, query): (&str, Option<&str>),
        repo: &RepositoryName,
        scope: &str,
        headers: &HeaderMap,
        prefer: Option<usize>,
    ) -> Result<(reqwest::Response, usize), UpstreamError> {
        let endpoints = &self.inner.endpoints;
        let order = endpoints.order(prefer);
        let last = order.len() - 1;
        for (n, &i) in order.iter().enumerate() {
            let url = self.url_at(i, path, query)?;
            let result = self
                .send_authorized(i, kind, method, &url, repo, scope, headers)
                .await;
            let failure = match &result {
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    Some(format!("it answered HTTP {}", r.status().as_u16()))
                }
                Ok(_) => None,
                Err(e) if e.is_endpoint_failure() => Some(e.to_string()),
                Err(_) => None,
            };
            match failure {
                None => {
                    endpoints.succeeded(i);
                    return result.map(|r| (r, i));
                }
                Some(why) => {
                    endpoints.failed(i, &why);
                    if n == last {
                        return result.map(|r| (r, i));
                    }
                    tracing::debug!(upstream = %self.inner.name, endpoint = %endpoints.get(i).url, "{why}; trying the next endpoint");
                }
            }
        }
        Err(UpstreamError::Config(format!(
            "upstream {:?} has no endpoints",
            self.inner.name
        )))
    }

    /// Sends a request with whatever auth this upstream is known to want; on a 401 with a
    /// challenge we can answer, retries once with fresh credentials. Returns the final
    /// response whatever its status (a second 401 becomes `Unauthorized`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_authorized(
        &self,
        endpoint: usize,
        kind: RequestKind,
        method: &Method,
        url: &Url,
        repo: &RepositoryName,
        scope: &str,
        headers: &HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let inner = &*self.inner;
        let reach = &inner.reach[endpoint];
        let proactive = reach.auth.proactive(&reach.client, scope).await?;
        let first = self
            .attempt(reach, kind, method, url, headers, proactive.as_ref())
            .await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenges = challenge::of_headers(first.headers());
        // Read off, so the retry reuses this connection (see `transport::discard`).
        transport::discard(first).await;
        let retry_auth = reach
            .auth
            .answer(&reach.client, &challenges, scope, proactive.as_ref())
            .await?;
        let second = self
            .attempt(reach, kind, method, url, headers, Some(&retry_auth))
            .await?;
        if second.status() == StatusCode::UNAUTHORIZED {
            tracing::debug!(upstream = %inner.name, %repo, "upstream refused fresh credentials");
            return Err(UpstreamError::Unauthorized { status: 401 });
        }
        Ok(second)
    }

    async fn attempt(
        &self,
        reach: &Reach,
        kind: RequestKind,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        // Blob GETs go on connections of their own; everything else shares the other client
        // (see `client::Protocols`).
        let client = if kind == RequestKind::Blob && method == Method::GET {
            &reach.blob_client
        } else {
            &reach.client
        };
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        transport::send(&self.inner.metrics, kind, request).await
    }
}
