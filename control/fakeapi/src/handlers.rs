//! The HTTP side: routes a request to discovery or to a resource verb, and answers in JSON.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch as tokio_watch};

use crate::discovery;
use crate::error::ApiError;
use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector, Selectors};
use crate::store::{Part, Store, WatchFrom};
use crate::table::{table, wants_table, IncludeObject};
use crate::watch::{self, WatchParams};

/// A response body: a whole JSON document or a watch stream.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Fault injection, shared by the handle and the request handlers.
#[derive(Default)]
pub(crate) struct Faults {
    pub delay: Mutex<Duration>,
    pub fail_count: AtomicU32,
    pub fail_code: AtomicU16,
}

/// What every request handler shares.
pub(crate) struct App {
    pub store: Store,
    pub bookmark_every: Duration,
    pub faults: Arc<Faults>,
    pub shutdown: tokio_watch::Receiver<bool>,
    pub address: String,
    pub aggregated_discovery: bool,
    pub log_requests: AtomicBool,
}

const JSON: &str = "application/json";

fn full(code: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(code, JSON, serde_json::to_vec(v).unwrap_or_default())
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// A parsed request, as far as the verb handlers need.
struct Req {
    method: Method,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some_and(|v| v == "All")
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        let base = self.content_type.split(';').next().unwrap_or("").trim();
        match base {
            "" | "application/json" | "*/*" => serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding the request body as JSON: {e}"))),
            "application/yaml" | "application/x-yaml" | "application/apply-patch+yaml" => {
                serde_yaml_ng::from_slice(&self.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding the request body as YAML: {e}")))
            }
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}); accepted media types include: application/json, application/yaml"
            ))),
        }
    }
}

/// Answers one request.
pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let delay = *app.faults.delay.lock().unwrap_or_else(|e| e.into_inner());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let injected = app
        .faults
        .fail_count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if injected {
        let code = app.faults.fail_code.load(Ordering::SeqCst);
        return Ok(error_response(&ApiError::injected(code)));
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let hdr = |h: header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = hdr(header::ACCEPT);
    let content_type = hdr(header::CONTENT_TYPE);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading the body: {e}"
            ))))
        }
    };
    let r = Req {
        method,
        query,
        accept,
        content_type,
        body,
    };
    let resp = route(&app, &path, &r)
        .await
        .unwrap_or_else(|e| error_response(&e));
    if app.log_requests.load(Ordering::Relaxed) {
        tracing::info!(method = %r.method, %path, code = resp.status().as_u16(), "request");
    } else {
        tracing::debug!(method = %r.method, %path, code = resp.status().as_u16(), "request");
    }
    Ok(resp)
}

fn only_get(r: &Req) -> Result<(), ApiError> {
    if r.method == Method::GET {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            r.method
        )))
    }
}

fn not_found() -> ApiError {
    ApiError::not_found_path("the server could not find the requested resource")
}

async fn route(app: &App, path: &str, r: &Req) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => {
            only_get(r)?;
            Ok(json_response(200, &discovery::version()))
        }
        ["healthz"] | ["readyz"] | ["livez"] => {
            Ok(full(StatusCode::OK, "text/plain", b"ok".to_vec()))
        }
        ["api"] => {
            only_get(r)?;
            if app.aggregated_discovery && discovery::wants_aggregated(&r.accept) {
                let doc = discovery::aggregated(&app.store.registry(), true);
                return Ok(full(
                    StatusCode::OK,
                    discovery::AGGREGATED_V2,
                    serde_json::to_vec(&doc).unwrap_or_default(),
                ));
            }
            Ok(json_response(200, &discovery::api_versions(&app.address)))
        }
        ["apis"] => {
            only_get(r)?;
            let reg = app.store.registry();
            if app.aggregated_discovery && discovery::wants_aggregated(&r.accept) {
                let doc = discovery::aggregated(&reg, false);
                return Ok(full(
                    StatusCode::OK,
                    discovery::AGGREGATED_V2,
                    serde_json::to_vec(&doc).unwrap_or_default(),
                ));
            }
            Ok(json_response(200, &discovery::api_group_list(&reg)))
        }
        ["openapi", "v2"] => {
            only_get(r)?;
            // An empty OpenAPI v2 document (kubectl decodes it as protobuf; an empty message is
            // an empty document): kubectl then validates and patches from its built-in types.
            if r.accept.contains("protobuf") {
                Ok(full(
                    StatusCode::OK,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    Vec::new(),
                ))
            } else {
                Ok(json_response(
                    200,
                    &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
                ))
            }
        }
        ["openapi", "v3"] => {
            only_get(r)?;
            Ok(json_response(200, &json!({"paths": {}})))
        }
        ["api", "v1", rest @ ..] => resource(app, "", "v1", rest, r).await,
        ["apis", group] => {
            only_get(r)?;
            discovery::api_group(&app.store.registry(), group)
                .map(|d| json_response(200, &d))
                .ok_or_else(not_found)
        }
        ["apis", group, version, rest @ ..] => resource(app, group, version, rest, r).await,
        _ => Err(not_found()),
    }
}

/// The parts of a resource URL after `group/version`.
struct Target<'a> {
    rt: ResourceType,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    status: bool,
    watch_path: bool,
}

fn target<'a>(
    app: &App,
    group: &str,
    version: &str,
    rest: &[&'a str],
) -> Result<Target<'a>, ApiError> {
    let (watch_path, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && app
            .store
            .resolve(group, version, rest[2])
            .is_some_and(|t| t.namespaced);
    let (ns, rest) = if namespaced_path {
        (Some(rest[1]), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(not_found()),
    };
    let rt = app
        .store
        .resolve(group, version, plural)
        .ok_or_else(not_found)?;
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(not_found());
    }
    let status = match sub {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return Err(not_found()),
    };
    if status && watch_path {
        return Err(not_found());
    }
    Ok(Target {
        rt,
        ns,
        name,
        status,
        watch_path,
    })
}

async fn resource(
    app: &App,
    group: &str,
    version: &str,
    rest: &[&str],
    r: &Req,
) -> Result<Response<Body>, ApiError> {
    if rest.is_empty() {
        only_get(r)?;
        return discovery::api_resource_list(&app.store.registry(), group, version)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found);
    }
    let t = target(app, group, version, rest)?;
    let rt = &t.rt;
    let ns_or_none = if rt.namespaced {
        t.ns.unwrap_or("")
    } else {
        ""
    };
    let part = if t.status { Part::Status } else { Part::Main };
    let store = &app.store;
    match (t.name, &r.method) {
        (None, &Method::GET) => {
            let watching = t.watch_path || matches!(r.q("watch"), Some("1" | "true"));
            if watching {
                start_watch(app, &t, version, r)
            } else {
                list(app, &t, version, r)
            }
        }
        (None, &Method::POST) => {
            if rt.namespaced && t.ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "{} are namespaced: POST to /namespaces/{{namespace}}/{}",
                    rt.plural, rt.plural
                )));
            }
            let obj = r.json_body()?;
            let created = store.create_at(rt, version, ns_or_none, obj, r.dry_run())?;
            Ok(json_response(201, &created))
        }
        (None, &Method::DELETE) => {
            let sel = selectors(r)?;
            let page = store.list_at(rt, version, t.ns, &sel, None, None, None)?;
            let mut deleted = Vec::new();
            for o in page.items {
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match store.delete_at(rt, version, &ns, &name, None, r.dry_run()) {
                    Ok(d) => deleted.push(d),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                200,
                &list_doc(rt, version, deleted, store.resource_version(), None, 0),
            ))
        }
        (Some(name), &Method::GET) => {
            let obj = store.get_at(rt, version, ns_or_none, name)?;
            if wants_table(&r.accept) {
                let rv = store.resource_version();
                return Ok(json_response(
                    200,
                    &table(
                        rt,
                        &[obj],
                        rv,
                        None,
                        IncludeObject::parse(r.q("includeObject")),
                    ),
                ));
            }
            Ok(json_response(200, &obj))
        }
        (Some(name), &Method::PUT) => {
            let obj = r.json_body()?;
            let updated = store.update_at(rt, version, ns_or_none, name, obj, part, r.dry_run())?;
            Ok(json_response(200, &updated))
        }
        (Some(name), &Method::PATCH) => patch_object(app, &t, version, ns_or_none, name, part, r),
        (Some(name), &Method::DELETE) if !t.status => {
            let opts: Value = if r.body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&r.body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            let pre = opts.get("preconditions").map(|p| {
                let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
                (s("uid"), s("resourceVersion"))
            });
            let dry = r.dry_run()
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v == "All"));
            let gone = store.delete_at(rt, version, ns_or_none, name, pre, dry)?;
            let mut details = json!({
                "name": name,
                "group": rt.group,
                "kind": rt.plural,
            });
            if let Some(uid) = gone.pointer("/metadata/uid") {
                details["uid"] = uid.clone();
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            r.method
        ))),
    }
}

fn selectors(r: &Req) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(r.q("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(r.q("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?,
    })
}

fn parse_rv(s: Option<&str>) -> Result<Option<u64>, ApiError> {
    match s {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resourceVersion {v:?}: it must be a number"
            ))
        }),
    }
}

fn list_doc(
    rt: &ResourceType,
    version: &str,
    items: Vec<Value>,
    rv: u64,
    cont: Option<String>,
    remaining: usize,
) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
        metadata["remainingItemCount"] = json!(remaining);
    }
    json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version(version),
        "metadata": metadata,
        "items": items,
    })
}

fn list(app: &App, t: &Target, version: &str, r: &Req) -> Result<Response<Body>, ApiError> {
    let sel = selectors(r)?;
    let limit = match r.q("limit") {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let rv = parse_rv(r.q("resourceVersion"))?;
    let page = app
        .store
        .list_at(&t.rt, version, t.ns, &sel, limit, r.q("continue"), rv)?;
    if wants_table(&r.accept) {
        let include = IncludeObject::parse(r.q("includeObject"));
        return Ok(json_response(
            200,
            &table(
                &t.rt,
                &page.items,
                page.rv,
                page.continue_token.as_deref(),
                include,
            ),
        ));
    }
    Ok(json_response(
        200,
        &list_doc(
            &t.rt,
            version,
            page.items,
            page.rv,
            page.continue_token,
            page.remaining,
        ),
    ))
}

fn start_watch(app: &App, t: &Target, version: &str, r: &Req) -> Result<Response<Body>, ApiError> {
    let sel = selectors(r)?;
    let rv = parse_rv(r.q("resourceVersion"))?;
    let initial_events = r.q("sendInitialEvents") == Some("true");
    let from = match rv {
        _ if initial_events => WatchFrom::Now,
        None | Some(0) => WatchFrom::Now,
        Some(n) => WatchFrom::After(n),
    };
    let timeout = match r.q("timeoutSeconds") {
        None | Some("") => None,
        Some(s) => Some(Duration::from_secs(s.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))
        })?)),
    };
    let params = WatchParams {
        rt: t.rt.clone(),
        version: version.to_string(),
        ns: t.ns.map(str::to_string),
        sel,
        initial_events_end: initial_events,
        bookmarks: r.q("allowWatchBookmarks") == Some("true"),
        timeout,
        table: wants_table(&r.accept).then(|| IncludeObject::parse(r.q("includeObject"))),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    match app.store.watch_at(&t.rt, t.ns, from) {
        Ok(start) => {
            tokio::spawn(watch::run(
                params,
                start,
                tx,
                app.bookmark_every,
                app.shutdown.clone(),
            ));
        }
        Err(e) => {
            // As the real server does: 200, then one ERROR event, then the end.
            let _ = tx.try_send(watch::error_line(&e));
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(JSON));
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    app: &App,
    t: &Target,
    version: &str,
    ns: &str,
    name: &str,
    part: Part,
    r: &Req,
) -> Result<Response<Body>, ApiError> {
    let rt = &t.rt;
    let kind = PatchType::from_content_type(&r.content_type).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {:?})",
            r.content_type
        ))
    })?;
    let doc: Value = if kind == PatchType::Apply {
        serde_yaml_ng::from_slice(&r.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(&r.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the patch as JSON: {e}")))?
    };
    let store = &app.store;
    if kind == PatchType::Apply
        && store.get_at(rt, version, ns, name).is_err()
        && part == Part::Main
    {
        let mut obj = doc;
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "an applied configuration must be an object",
            ));
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["name"] = json!(name);
        let created = store.create_at(rt, version, ns, obj, r.dry_run())?;
        return Ok(json_response(201, &created));
    }
    let rt2 = rt.clone();
    let name2 = name.to_string();
    let updated = store.modify(
        rt,
        version,
        ns,
        name,
        part,
        r.dry_run(),
        move |cur| {
            let mut next = cur.clone();
            patch::apply(kind, &mut next, &doc).map_err(|e| ApiError::invalid(&rt2.kind, &name2, e))?;
            let want = next.pointer("/metadata/resourceVersion");
            if want.is_some() && want != cur.pointer("/metadata/resourceVersion") && kind != PatchType::Apply {
                return Err(ApiError::conflict(
                    &rt2,
                    &name2,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            Ok(next)
        },
        None,
    )?;
    Ok(json_response(200, &updated))
}
