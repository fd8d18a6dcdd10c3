//! `/openapi.json` and `/docs` over HTTP, checked against the route table: every declared route
//! appears with its methods, every operation answers something and errors use the one `Error`
//! schema, credentials and scopes follow each route's access, and the HTML reference lists every
//! path without loading anything from elsewhere. The document is also validated by
//! `openapi-spec-validator` (installed by `scripts/setup.sh`).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::auth::{Access, RouteSpec};
use crate::router::route_table;
use crate::testing::TestServer;

const METHODS: &[&str] = &[
    "get", "head", "post", "put", "patch", "delete", "options", "trace",
];

/// The OpenAPI spelling of an axum template: `{*rest}` → `{rest}`.
fn openapi_path(spec: &RouteSpec) -> String {
    spec.path.replace("{*", "{")
}

async fn fetch_document(server: &TestServer) -> Value {
    let response = server
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.expect("the document is JSON")
}

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, &'static str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.push((path.clone(), *method, op));
            }
        }
    }
    out
}

/// A `$ref` into the document, followed.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("a local $ref"))
            .unwrap_or_else(|| panic!("{r} resolves")),
        None => value,
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_public() {
    let server = TestServer::start().await;
    let doc = fetch_document(&server).await;
    let version = doc["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["title"], "Patchwork");
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    // Answered the same with a token: public, not token-dependent.
    let with_token: Value = server
        .admin(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(with_token, doc);
}

#[tokio::test]
async fn every_route_appears_with_its_methods() {
    let server = TestServer::start().await;
    let doc = fetch_document(&server).await;
    let paths = doc["paths"].as_object().expect("paths");
    let table = route_table();
    let mut missing = Vec::new();
    for spec in &table {
        let path = openapi_path(spec);
        let Some(item) = paths.get(&path) else {
            missing.push(format!("{:?} {}", spec.method, spec.path));
            continue;
        };
        match &spec.method {
            Some(method) => {
                let key = method.as_str().to_ascii_lowercase();
                if item.get(&key).is_none() {
                    missing.push(format!("{method} {}", spec.path));
                }
            }
            // A route that takes every method: flagged, and documented under some methods.
            None => {
                assert_eq!(item["x-any-method"], true, "{path}: x-any-method");
                assert!(
                    METHODS.iter().any(|m| item.get(*m).is_some()),
                    "{path}: no operation"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    // And nothing the route table does not declare.
    let declared: BTreeSet<String> = table.iter().map(openapi_path).collect();
    for path in paths.keys() {
        assert!(
            declared.contains(path),
            "{path} is documented but not routed"
        );
    }
    // `/openapi.json` and `/docs` document themselves.
    assert!(paths["/openapi.json"].get("get").is_some());
    assert!(paths["/docs"].get("get").is_some());
}

#[tokio::test]
async fn operations_are_described_and_errors_use_the_error_schema() {
    let server = TestServer::start().await;
    let doc = fetch_document(&server).await;
    let error_ref = "#/components/schemas/Error";
    // The `Error` schema is the wire shape: `{"error": {"code", "message", "details"?}}`.
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let detail = resolve(&doc, &error["properties"]["error"]);
    let required: BTreeSet<&str> = detail["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message"]));
    assert!(detail["properties"].get("details").is_some());
    // …which is what the server really answers.
    let real: Value = server
        .anon(Method::GET, "/no/such/route")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in real["error"].as_object().unwrap().keys() {
        assert!(
            detail["properties"].get(key).is_some(),
            "undocumented {key}"
        );
    }

    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let name = format!("{method} {path}");
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: no summary (not described in ops/openapi/operations.rs)"
        );
        assert!(
            ids.insert(op["operationId"].as_str().unwrap().to_owned()),
            "{name}: id"
        );
        assert_eq!(
            op["tags"].as_array().map(Vec::len),
            Some(1),
            "{name}: one tag"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{name}: no response");
        // Something besides errors (the gone legacy hooks answer only `410`).
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with(['1', '2', '3']) || s == "410"),
            "{name}: no success answer"
        );
        let mut references_error = false;
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{name} {status}");
            if status.starts_with(['4', '5'])
                && let Some(json) = response["content"].get("application/json")
            {
                assert_eq!(json["schema"]["$ref"], error_ref, "{name} {status}");
                references_error = true;
            }
        }
        assert!(references_error, "{name}: no answer uses the Error schema");
        // Every path parameter is declared, in the path, required.
        let declared: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{name}"))
            .filter_map(|p| p["name"].as_str())
            .collect();
        for segment in path.split('/') {
            if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                assert!(
                    declared.contains(&param),
                    "{name}: {{{param}}} not declared"
                );
            }
        }
        // A JSON request body has a schema.
        if let Some(json) = op["requestBody"]["content"].get("application/json") {
            assert!(json["schema"].is_object(), "{name}: body schema");
        }
    }
    // Every `$ref` in the document resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        assert!(doc.pointer(&r[1..]).is_some(), "{r} does not resolve");
    }
}

#[tokio::test]
async fn credentials_and_scopes_follow_each_routes_access() {
    let server = TestServer::start().await;
    let doc = fetch_document(&server).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["session"]["type"], "apiKey");
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["session"]["name"], crate::identity::COOKIE);
    assert_eq!(schemes["csrf"]["in"], "header");
    assert_eq!(schemes["csrf"]["name"], "X-CSRF-Token");
    assert_eq!(schemes["access_token"]["in"], "query");
    assert_eq!(schemes["access_token"]["name"], "access_token");

    for spec in route_table() {
        let item = &doc["paths"][openapi_path(&spec)];
        let ops: Vec<&Value> = match &spec.method {
            Some(m) => vec![&item[m.as_str().to_ascii_lowercase()]],
            None => METHODS.iter().filter_map(|m| item.get(*m)).collect(),
        };
        for op in ops {
            let name = format!("{:?} {}", spec.method, spec.path);
            let security = op["security"].as_array().expect("security is explicit");
            let named: BTreeSet<&str> = security
                .iter()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            for scheme in &named {
                assert!(schemes.get(*scheme).is_some(), "{name}: unknown {scheme}");
            }
            assert_eq!(
                named.contains("access_token"),
                spec.query_token,
                "{name}: ?access_token= iff the route declares it"
            );
            let scopes: Vec<&str> = op["x-required-scopes"]
                .as_array()
                .expect("x-required-scopes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            match spec.access {
                Access::Public | Access::Anonymous => {
                    assert!(!named.contains("session"), "{name}");
                }
                Access::Session => {
                    assert!(named.contains("session"), "{name}");
                    assert!(
                        named.is_subset(&BTreeSet::from(["session", "csrf"])),
                        "{name}"
                    );
                }
                Access::AnyCaller | Access::Admin => {
                    assert!(
                        named.contains("bearer") && named.contains("session"),
                        "{name}"
                    )
                }
                Access::Global(action) => {
                    assert_eq!(scopes, [action.as_str()], "{name}");
                    assert!(security.iter().any(|r| r["bearer"][0] == action.as_str()));
                }
                Access::Db { actions, .. } => {
                    let expected: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
                    assert_eq!(scopes, expected, "{name}");
                    for action in expected {
                        assert!(
                            security.iter().any(|r| r["bearer"][0] == action),
                            "{name}: bearer with {action}"
                        );
                    }
                    let description = op["description"].as_str().unwrap();
                    assert!(description.contains("**Access:**"), "{name}");
                }
            }
        }
    }
}

#[tokio::test]
async fn docs_page_lists_every_path_and_loads_nothing_from_elsewhere() {
    let server = TestServer::start().await;
    let response = server.anon(Method::GET, "/docs").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for spec in route_table() {
        let path = openapi_path(&spec);
        assert!(
            html.contains(&format!("<span class=\"path\">{path}</span>")),
            "{path} is not on /docs"
        );
    }
    // Nothing external: no absolute URL at all, no script, no stylesheet link, no import.
    let lower = html.to_ascii_lowercase();
    for needle in [
        "http://",
        "https://",
        "<script",
        "<link",
        "@import",
        "url(",
        "src=\"//",
        "href=\"//",
    ] {
        assert!(!lower.contains(needle), "/docs contains {needle}");
    }
    // Scopes and schemas are on the page.
    assert!(html.contains("<code>query.read</code>"));
    assert!(html.contains("id=\"schema-Error\""));
}

#[tokio::test]
async fn the_document_passes_openapi_spec_validator() {
    let server = TestServer::start().await;
    let bytes = server
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let tools = std::env::var_os("PATCHWORK_TOOLS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/patchwork-tools")
        },
        std::path::PathBuf::from,
    );
    let site = tools.join("openapi-validator");
    assert!(
        site.join("openapi_spec_validator").is_dir(),
        "openapi-spec-validator is missing: run scripts/setup.sh (it pip-installs it into {})",
        site.display()
    );
    let file = server.dir.path().join("openapi.json");
    std::fs::write(&file, &bytes).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys\n\
             from openapi_spec_validator import OpenAPIV31SpecValidator\n\
             errors = list(OpenAPIV31SpecValidator(json.load(open(sys.argv[1]))).iter_errors())\n\
             for e in errors: print(e.message, list(e.path))\n\
             sys.exit(1 if errors else 0)",
        )
        .arg(&file)
        .env("PYTHONPATH", &site)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
