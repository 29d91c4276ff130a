//! The push side of the OCI distribution API, for upstreams with `push = true`: blob
//! uploads (`POST` monolithic with `?digest=`, session-based `POST`/`PATCH`/`PUT`, `GET`
//! for a session's progress, `DELETE` to cancel), cross-repository mounts, `HEAD` on blobs
//! for clients that skip blobs the repository has, manifest `PUT` by tag and digest, and
//! `DELETE` of manifests and blobs passed to the upstream.
//!
//! Owns: reading what the client sent (`Content-Range`, `Content-Length`, `Content-Type`,
//! `?digest=`, `?mount=&from=`), the replies clients expect (`Location` in the client's
//! own routing form, `Range`, `Docker-Upload-UUID`, `Docker-Content-Digest`), and asking
//! [`crate::cache::push`] once per request. Its failures arrive classified (a
//! [`crate::cache::push::PushFailure`]) and become OCI errors in `error.rs`
//! ([`OciError::from_push`]).
//!
//! Must not: check access (an authorized request reached it), hold upload state, or talk
//! to the upstream (that is [`crate::cache::push`]).

use super::api::{ApiResponse, RegistryApi};
use super::body;
use super::door::request_host;
use super::error::{ErrorCode, OciError, Subject};
use super::response::{base_response, error_response, finish, DOCKER_CONTENT_DIGEST};
use super::route::{decoded_query_param, ApiRoute, RequestParts};
use crate::cache::push::{
    MountResult, Pushes, UploadBody, UploadRef, UploadState, MAX_PUSHED_MANIFEST,
};
use crate::oci::{Digest, Reference, RepoTarget};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, Method, Response, StatusCode};

type Answer = Result<Response<body::ResponseBody>, OciError>;

/// The `Content-Length` of a request, when it sent one.
fn content_length(req: &http::request::Parts) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the request carries a body (a length above zero, or chunked).
fn has_body(req: &http::request::Parts) -> bool {
    match content_length(req) {
        Some(n) => n > 0,
        None => req.headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// `Content-Range: <start>-<end>` of a `PATCH` (the spec's form; `bytes ` tolerated).
fn content_range_start(req: &http::request::Parts) -> Result<Option<u64>, OciError> {
    let Some(v) = req.headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text).trim();
    let parsed = text.split_once('-').and_then(|(a, b)| {
        let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
        (b >= a).then_some((a, b))
    });
    match parsed {
        Some((start, end)) => {
            if content_length(req).is_some_and(|len| len != end - start + 1) {
                return Err(OciError::blob_upload_invalid(
                    "Content-Range and Content-Length disagree about the chunk's size",
                ));
            }
            Ok(Some(start))
        }
        None => Err(OciError::blob_upload_invalid(format!(
            "Content-Range must be <start>-<end>, got {text:?}"
        ))),
    }
}

/// Where the client's repository is, in its own routing form, and the query it must keep.
struct ClientForm {
    /// `/v2/<client's name path>` (up to, not including, `/blobs/uploads`).
    repo_path: String,
    /// `?ns=<host>` when the client routed with it.
    ns_query: String,
}

impl ClientForm {
    fn new(client_path: &str, query: Option<&str>) -> Self {
        let repo_path = client_path
            .strip_suffix("/blobs/uploads")
            .unwrap_or(client_path)
            .to_string();
        let ns_query = decoded_query_param(query, "ns")
            .filter(|v| !v.is_empty())
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        ClientForm {
            repo_path,
            ns_query,
        }
    }

    fn session(&self, id: &str) -> String {
        format!("{}/blobs/uploads/{id}{}", self.repo_path, self.ns_query)
    }

    fn blob(&self, digest: &Digest) -> String {
        format!("{}/blobs/{digest}{}", self.repo_path, self.ns_query)
    }
}

/// 202 (or 204 for a status query) for a session in progress.
fn session_response(status: StatusCode, form: &ClientForm, state: &UploadState) -> Answer {
    let range = format!("0-{}", state.offset.saturating_sub(1));
    Ok(finish(
        base_response(status)
            .header(header::LOCATION, form.session(&state.id))
            .header(header::RANGE, range)
            .header("Docker-Upload-UUID", state.id.as_str())
            .header(header::CONTENT_LENGTH, 0),
        body::empty(),
    ))
}

/// 201 for a blob now in the repository.
fn blob_created(form: &ClientForm, digest: &Digest) -> Answer {
    Ok(finish(
        base_response(StatusCode::CREATED)
            .header(header::LOCATION, form.blob(digest))
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(header::CONTENT_LENGTH, 0),
        body::empty(),
    ))
}

fn no_content(status: StatusCode) -> Answer {
    Ok(finish(
        base_response(status).header(header::CONTENT_LENGTH, 0),
        body::empty(),
    ))
}

fn digest_param(query: Option<&str>, key: &str) -> Result<Option<Digest>, OciError> {
    match decoded_query_param(query, key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e: crate::oci::DigestError| OciError::digest_invalid(e.to_string())),
    }
}

/// The body as [`UploadBody`]'s stream, read whole up to `limit` bytes (manifests).
async fn read_bounded(mut body: UploadBody, limit: usize) -> Result<Bytes, OciError> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestInvalid,
                "the manifest body broke off",
            )
            .with_detail(e.to_string())
        })?;
        if out.len() + frame.len() > limit {
            return Err(OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                format!("manifests larger than {limit} bytes are not accepted"),
            ));
        }
        out.extend_from_slice(&frame);
    }
    Ok(out.freeze())
}

impl RegistryApi {
    /// The repository a mount's `from=<name>` names, routed as the client's own name in the
    /// same request would be (path prefix, `/<host>/v2/`, `?ns=`, alias host, default
    /// upstream): `lan.test/team/a` in the path-prefix form is `team/a` on `lan.test`.
    fn mount_source(
        &self,
        req: &http::request::Parts,
        form: &ClientForm,
        from: &str,
    ) -> Option<RepoTarget> {
        let api_root = form.repo_path.find("/v2/")? + "/v2/".len();
        let path = format!("{}{from}/blobs/uploads/", &form.repo_path[..api_root]);
        let parts = RequestParts {
            method: &Method::POST,
            host: request_host(req),
            path: &path,
            query: req.uri.query(),
            namespace: super::door::oci_namespace(req),
        };
        self.route(&parts).ok()?.target().cloned()
    }

    /// A request of the push API (the route's `is_push`, or a pusher's `HEAD` on a blob),
    /// already allowed by access control. `owner` names the token for its upload quota.
    pub(super) async fn push(
        &self,
        pushes: &Pushes,
        req: &http::request::Parts,
        body: UploadBody,
        routed: ApiRoute,
        owner: &str,
    ) -> ApiResponse {
        let head = req.method == Method::HEAD;
        let (label, result) = match routed {
            ApiRoute::Upload {
                target,
                session,
                client_path,
            } => {
                let form = ClientForm::new(&client_path, req.uri.query());
                let r = self
                    .upload(pushes, req, body, &target, session.as_deref(), &form, owner)
                    .await;
                ("upload", r)
            }
            ApiRoute::Manifest { target, reference } => {
                let r = match req.method {
                    Method::PUT => {
                        self.put_manifest(pushes, req, body, &target, &reference)
                            .await
                    }
                    _ => pushes
                        .delete(&target, &format!("manifests/{reference}"))
                        .await
                        .map_err(|e| OciError::from_push(e, Subject::Manifest))
                        .and_then(|()| no_content(StatusCode::ACCEPTED)),
                };
                ("manifest_push", r)
            }
            ApiRoute::Blob { target, digest } if head => {
                let r = match pushes.blob_size(&target, &digest).await {
                    Ok(Some(size)) => Ok(finish(
                        base_response(StatusCode::OK)
                            .header(header::CONTENT_LENGTH, size)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(DOCKER_CONTENT_DIGEST, digest.to_string()),
                        body::empty(),
                    )),
                    Ok(None) => Err(OciError::blob_unknown(digest)),
                    Err(e) => Err(OciError::from_push(e, Subject::Blob)),
                };
                ("blob", r)
            }
            ApiRoute::Blob { target, digest } => {
                let r = pushes
                    .delete(&target, &format!("blobs/{digest}"))
                    .await
                    .map_err(|e| OciError::from_push(e, Subject::Blob))
                    .and_then(|()| no_content(StatusCode::ACCEPTED));
                ("blob_push", r)
            }
            _ => ("error", Err(OciError::unsupported_method(&req.method))),
        };
        ApiResponse {
            response: result.unwrap_or_else(|e| error_response(&e, head)),
            route: label,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        pushes: &Pushes,
        req: &http::request::Parts,
        body: UploadBody,
        target: &RepoTarget,
        session: Option<&str>,
        form: &ClientForm,
        owner: &str,
    ) -> Answer {
        let query = req.uri.query();
        let fail = |e| OciError::from_push(e, Subject::Blob);
        match (&req.method, session) {
            (&Method::POST, None) => {
                if let Some(mount) = digest_param(query, "mount")? {
                    // `from` is in the client's naming, like its own repository: routed the
                    // same way, it can be mounted only from the same upstream. Otherwise
                    // (another upstream, or a name that does not route) a normal upload.
                    let from = decoded_query_param(query, "from")
                        .and_then(|f| self.mount_source(req, form, &f))
                        .filter(|f| f.upstream == target.upstream);
                    if let Some(RepoTarget { repo: from, .. }) = from {
                        return match pushes.mount(target, owner, &mount, &from).await {
                            Ok(MountResult::Mounted(b)) => blob_created(form, &b.digest),
                            Ok(MountResult::Upload(state)) => {
                                session_response(StatusCode::ACCEPTED, form, &state)
                            }
                            Err(e) => Err(fail(e)),
                        };
                    }
                }
                if let Some(digest) = digest_param(query, "digest")? {
                    let pushed = pushes
                        .monolithic(target, owner, &digest, body, content_length(req))
                        .await
                        .map_err(fail)?;
                    return blob_created(form, &pushed.digest);
                }
                let state = pushes.start(target, owner).await.map_err(fail)?;
                session_response(StatusCode::ACCEPTED, form, &state)
            }
            (&Method::PATCH, Some(id)) => {
                let id = UploadRef { id, owner };
                let start = content_range_start(req)?;
                let state = pushes
                    .chunk(target, id, body, start, content_length(req))
                    .await
                    .map_err(fail)?;
                session_response(StatusCode::ACCEPTED, form, &state)
            }
            (&Method::PUT, Some(id)) => {
                let id = UploadRef { id, owner };
                let Some(digest) = digest_param(query, "digest")? else {
                    return Err(OciError::digest_invalid(
                        "closing an upload needs ?digest=<digest>",
                    ));
                };
                let last = has_body(req).then(|| (body, content_length(req)));
                let pushed = pushes
                    .finish(target, id, &digest, last)
                    .await
                    .map_err(fail)?;
                blob_created(form, &pushed.digest)
            }
            (&Method::GET, Some(id)) => {
                let id = UploadRef { id, owner };
                let state = pushes.status(target, id).await.map_err(fail)?;
                session_response(StatusCode::NO_CONTENT, form, &state)
            }
            (&Method::DELETE, Some(id)) => {
                let id = UploadRef { id, owner };
                pushes.cancel(target, id).await.map_err(fail)?;
                no_content(StatusCode::NO_CONTENT)
            }
            (m, _) => Err(OciError::unsupported_method(m)),
        }
    }

    async fn put_manifest(
        &self,
        pushes: &Pushes,
        req: &http::request::Parts,
        body: UploadBody,
        target: &RepoTarget,
        reference: &Reference,
    ) -> Answer {
        if content_length(req).is_some_and(|n| n > MAX_PUSHED_MANIFEST as u64) {
            return Err(OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                format!("manifests larger than {MAX_PUSHED_MANIFEST} bytes are not accepted"),
            ));
        }
        let bytes = read_bounded(body, MAX_PUSHED_MANIFEST).await?;
        let media_type = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .filter(|v| !v.is_empty())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string());
        let pushed = pushes
            .put_manifest(target, reference, &media_type, bytes)
            .await
            .map_err(|e| OciError::from_push(e, Subject::Manifest))?;
        let repo_path = req
            .uri
            .path()
            .rsplit_once("/manifests/")
            .map_or(req.uri.path(), |(p, _)| p);
        let ns = decoded_query_param(req.uri.query(), "ns")
            .filter(|v| !v.is_empty())
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        Ok(finish(
            base_response(StatusCode::CREATED)
                .header(
                    header::LOCATION,
                    format!("{repo_path}/manifests/{}{ns}", pushed.digest),
                )
                .header(DOCKER_CONTENT_DIGEST, pushed.digest.to_string())
                .header(header::CONTENT_LENGTH, 0),
            body::empty(),
        ))
    }
}
