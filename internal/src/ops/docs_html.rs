//! `GET /docs`: the API reference as one HTML page, rendered here from the OpenAPI document
//! ([`super::openapi::document`]) — so it lists exactly what `/openapi.json` does, which is
//! exactly the route table. Plain HTML and an inline stylesheet: no script, no font, nothing
//! fetched from anywhere (it works offline and under a `default-src 'none'` policy).
//!
//! The renderer knows the few shapes our document uses: operations grouped by tag, parameters,
//! bodies and answers per media type, schemas as field tables (`$ref`s become links to the
//! schema section), `oneOf`/`allOf`, and the `x-access` / `x-required-scopes` extensions.
//! Descriptions are CommonMark in the document; only what we write is rendered (paragraphs,
//! `code`, **bold**), everything else is escaped text.

use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use node::Node;

mod node;

/// The page, rendered on first use (the document never changes while the process runs).
pub fn page() -> &'static Bytes {
    static PAGE: OnceLock<Bytes> = OnceLock::new();
    PAGE.get_or_init(|| {
        let doc: Node = serde_json::from_slice(super::openapi::document())
            .expect("the OpenAPI document is JSON");
        Bytes::from(render(&doc))
    })
}

/// `GET /docs`.
pub async fn serve() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Nothing but the inline stylesheet may load or run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        page().clone(),
    )
        .into_response()
}

const METHODS: &[&str] = &[
    "get", "head", "post", "put", "patch", "delete", "options", "trace",
];

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #fff; --panel: #f6f8fa;
  --line: #d1d9e0; --link: #0969da; --code: #eff2f5; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117;
  --panel: #151b23; --line: #3d444d; --link: #4493f8; --code: #262c36; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; color: var(--fg); background: var(--bg); }
code, .path, .navpath { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 0.88em; }
code { background: var(--code); padding: 0.1em 0.3em; border-radius: 4px; }
a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
.layout { display: flex; align-items: flex-start; max-width: 88rem; margin: 0 auto; }
nav { position: sticky; top: 0; width: 19rem; flex: none; max-height: 100vh; overflow-y: auto;
  padding: 1.25rem 1rem; border-right: 1px solid var(--line); font-size: 13px; }
nav h2 { font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted);
  margin: 1rem 0 0.3rem; }
nav ul { list-style: none; margin: 0; padding: 0; }
nav li { margin: 0.15rem 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
main { flex: 1; min-width: 0; max-width: 64rem; padding: 1.25rem 2rem 4rem; }
header h1 { margin: 0 0 0.3rem; font-size: 1.7rem; }
.version { color: var(--muted); font-size: 0.9rem; font-weight: normal; }
section > h2 { margin-top: 2.5rem; padding-bottom: 0.3rem; border-bottom: 1px solid var(--line); }
.op { border: 1px solid var(--line); border-radius: 8px; margin: 1.25rem 0; padding: 0.2rem 1.1rem 0.8rem;
  background: var(--bg); }
.op h3 { display: flex; flex-wrap: wrap; gap: 0.5rem; align-items: baseline; font-size: 1rem;
  margin: 0.8rem 0 0.4rem; }
.op h3 .path { font-weight: 600; word-break: break-all; }
.op h3 .summary { color: var(--muted); font-weight: normal; }
.method { display: inline-block; min-width: 4.2em; text-align: center; border-radius: 4px;
  padding: 0.05em 0.4em; color: #fff; font: 600 11px/1.7 ui-monospace, Menlo, Consolas, monospace;
  text-transform: uppercase; vertical-align: 1px; }
.get { background: #1a7f37; } .post { background: #0969da; } .put { background: #9a6700; }
.patch { background: #8250df; } .delete { background: #cf222e; } .head, .options, .trace { background: #59636e; }
.any { background: #57606a; }
h4 { margin: 1rem 0 0.3rem; font-size: 0.85rem; text-transform: uppercase; letter-spacing: 0.04em;
  color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: 0.3rem 0; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 0.35rem 0.6rem; border-top: 1px solid var(--line); }
th { background: var(--panel); font-weight: 600; }
.meta th { width: 8rem; }
td.name { white-space: nowrap; }
.req { color: #cf222e; font-size: 12px; }
.muted, .type { color: var(--muted); }
.scopes code { margin-right: 0.25rem; }
.status { font-weight: 600; white-space: nowrap; }
.s2 { color: #1a7f37; } .s3 { color: #9a6700; } .s4 { color: #cf222e; } .s5 { color: #8250df; } .s1 { color: var(--muted); }
.media { margin: 0.3rem 0 0.5rem; }
.media > .mt { font-size: 12px; color: var(--muted); }
.schema { margin: 1rem 0; }
p { margin: 0.4rem 0; }
@media (max-width: 900px) { .layout { display: block; } nav { position: static; width: auto;
  max-height: none; border-right: 0; border-bottom: 1px solid var(--line); } main { padding: 1rem; } }
"#;

/// The whole page.
pub fn render(doc: &Node) -> String {
    let mut out = String::with_capacity(256 * 1024);
    let info = &doc["info"];
    let title = info["title"].as_str().unwrap_or("API");
    let version = info["version"].as_str().unwrap_or("");
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} API reference</title><style>{STYLE}</style></head><body><div class=\"layout\">",
        esc(title)
    );
    let groups = grouped(doc);
    // Contents.
    out.push_str("<nav><strong>Contents</strong><ul><li><a href=\"#auth\">Authentication</a></li>");
    out.push_str("<li><a href=\"#schemas\">Schemas</a></li></ul>");
    for (tag, _, ops) in &groups {
        let _ = write!(out, "<h2><a href=\"#tag-{0}\">{0}</a></h2><ul>", esc(tag));
        for op in ops {
            // The document's routes all start alike: the contents show what differs.
            let short = match op.path.strip_prefix("/api/v1/db/{db_id}") {
                Some(rest) => format!("…{rest}"),
                None => op.path.to_owned(),
            };
            let _ = write!(
                out,
                "<li><a href=\"#{}\" title=\"{}\">{} <span class=\"navpath\">{}</span></a></li>",
                esc(&op.id),
                esc(op.path),
                badge(op.method, op.any),
                esc(&short)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</nav><main>");
    let _ = write!(
        out,
        "<header><h1>{} <span class=\"version\">{}</span></h1>{}<p>The same, machine-readable: \
         <a href=\"/openapi.json\"><code>/openapi.json</code></a> (OpenAPI {}).</p></header>",
        esc(title),
        esc(version),
        markdown(info["description"].as_str().unwrap_or("")),
        esc(doc["openapi"].as_str().unwrap_or("")),
    );
    security_section(&mut out, doc);
    for (tag, description, ops) in &groups {
        let _ = write!(
            out,
            "<section id=\"tag-{0}\"><h2>{0}</h2>{1}",
            esc(tag),
            markdown(description)
        );
        for op in ops {
            operation(&mut out, doc, op);
        }
        out.push_str("</section>");
    }
    schemas_section(&mut out, doc);
    out.push_str("</main></div></body></html>\n");
    // Descriptions name shapes in code spans (`WatchResult`): make those links.
    for (name, _) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let name = esc(name);
        out = out.replace(
            &format!("<code>{name}</code>"),
            &format!("<a href=\"#schema-{name}\"><code>{name}</code></a>"),
        );
    }
    out
}

/// One operation as the page lists it.
struct Op<'a> {
    id: String,
    method: &'a str,
    path: &'a str,
    /// The route takes every method; this is one of the documented ones.
    any: bool,
    value: &'a Node,
}

/// Operations by tag, tags in the document's order (then any tag it does not declare).
fn grouped(doc: &Node) -> Vec<(String, String, Vec<Op<'_>>)> {
    let mut groups: Vec<(String, String, Vec<Op<'_>>)> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or_default().to_owned();
            let description = t["description"].as_str().unwrap_or_default().to_owned();
            (name, description, Vec::new())
        })
        .collect();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let any = item["x-any-method"].as_bool().unwrap_or(false);
        for method in METHODS {
            let Some(value) = item.get(method) else {
                continue;
            };
            let tag = value["tags"][0].as_str().unwrap_or("other").to_owned();
            let op = Op {
                id: value["operationId"]
                    .as_str()
                    .map_or_else(|| format!("{method}-{path}"), str::to_owned),
                method,
                path,
                any,
                value,
            };
            match groups.iter_mut().find(|(name, _, _)| *name == tag) {
                Some(group) => group.2.push(op),
                None => groups.push((tag, String::new(), vec![op])),
            }
        }
    }
    groups.retain(|(_, _, ops)| !ops.is_empty());
    groups
}

fn badge(method: &str, any: bool) -> String {
    let title = if any {
        " title=\"this route takes every method\""
    } else {
        ""
    };
    format!("<span class=\"method {method}\"{title}>{method}</span>")
}

fn operation(out: &mut String, doc: &Node, op: &Op<'_>) {
    let v = op.value;
    let _ = write!(
        out,
        "<article class=\"op\" id=\"{}\"><h3>{} <span class=\"path\">{}</span> \
         <span class=\"summary\">{}</span></h3>",
        esc(&op.id),
        badge(op.method, op.any),
        esc(op.path),
        esc(v["summary"].as_str().unwrap_or(""))
    );
    if op.any {
        out.push_str(
            "<p class=\"muted\">This route takes every method; the usual ones are listed.</p>",
        );
    }
    out.push_str(&markdown(v["description"].as_str().unwrap_or("")));

    // Scope and credentials.
    let scopes: Vec<&str> = v["x-required-scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Node::as_str)
        .collect();
    let access = v["x-access"].as_str().unwrap_or("");
    out.push_str("<table class=\"meta\"><tr><th>Scope</th><td class=\"scopes\">");
    if scopes.is_empty() {
        let _ = write!(
            out,
            "<span class=\"muted\">{}</span>",
            esc(&access.replace('_', " "))
        );
    } else {
        let list: Vec<String> = scopes
            .iter()
            .map(|s| format!("<code>{}</code>", esc(s)))
            .collect();
        out.push_str(&list.join(" or "));
    }
    out.push_str("</td></tr><tr><th>Credentials</th><td>");
    out.push_str(&credentials(v));
    out.push_str("</td></tr></table>");

    // Parameters.
    if let Some(params) = v["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>");
        for p in params {
            let required = if p["required"].as_bool().unwrap_or(false) {
                " <span class=\"req\">required</span>"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<tr><td class=\"name\"><code>{}</code>{required}</td><td>{}</td><td class=\"type\">{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                type_label(&p["schema"]),
                inline(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }

    // Request body.
    if let Some(body) = v.get("requestBody") {
        let required = if body["required"].as_bool().unwrap_or(false) {
            " <span class=\"req\">required</span>"
        } else {
            ""
        };
        let _ = write!(out, "<h4>Request body{required}</h4>");
        if let Some(d) = body["description"].as_str() {
            out.push_str(&markdown(d));
        }
        media(out, doc, &body["content"], true);
    }

    // Responses.
    out.push_str("<h4>Responses</h4><table><tr><th>Status</th><th>Description</th></tr>");
    for (status, response) in v["responses"].as_object().into_iter().flatten() {
        let response = resolve(doc, response);
        let class = format!("s{}", status.chars().next().unwrap_or('0'));
        let _ = write!(
            out,
            "<tr><td class=\"status {class}\">{}</td><td>{}",
            esc(status),
            markdown(response["description"].as_str().unwrap_or(""))
        );
        if let Some(headers) = response["headers"].as_object() {
            for (name, h) in headers {
                let _ = write!(
                    out,
                    "<p class=\"muted\">Header <code>{}</code>: {}</p>",
                    esc(name),
                    inline(h["description"].as_str().unwrap_or(""))
                );
            }
        }
        media(
            out,
            doc,
            &response["content"],
            !status.starts_with(['4', '5']),
        );
        out.push_str("</td></tr>");
    }
    out.push_str("</table></article>");
}

/// The credentials an operation accepts, from its security requirements.
fn credentials(op: &Node) -> String {
    let Some(requirements) = op["security"].as_array() else {
        return "none".into();
    };
    if requirements.is_empty() {
        return "none".into();
    }
    let mut alternatives: Vec<String> = Vec::new();
    for requirement in requirements {
        let Some(map) = requirement.as_object() else {
            continue;
        };
        let label = if map.is_empty() {
            "none (a signed URL)".to_owned()
        } else {
            // The CSRF header goes with the session cookie: named after it.
            let mut keys: Vec<&String> = map.iter().map(|(k, _)| k).collect();
            keys.sort_by_key(|k| *k == "csrf");
            keys.into_iter()
                .map(|k| {
                    let name = match k.as_str() {
                        "bearer" => "bearer token",
                        "session" => "session cookie",
                        "csrf" => "<code>X-CSRF-Token</code>",
                        "access_token" => "<code>?access_token=</code>",
                        other => other,
                    };
                    format!("<a href=\"#scheme-{}\">{name}</a>", esc(k))
                })
                .collect::<Vec<_>>()
                .join(" + ")
        };
        if !alternatives.contains(&label) {
            alternatives.push(label);
        }
    }
    alternatives.join(" · ")
}

/// Each media type of a body with its schema; `expand`: also the referenced object's fields (not
/// for errors, which all share the `Error` shape).
fn media(out: &mut String, doc: &Node, content: &Node, expand: bool) {
    for (media_type, m) in content.as_object().into_iter().flatten() {
        let _ = write!(
            out,
            "<div class=\"media\"><span class=\"mt\">{}</span> ",
            esc(media_type)
        );
        let schema = &m["schema"];
        out.push_str(&type_label(schema));
        if let Some(d) = schema["description"].as_str() {
            let _ = write!(out, " — {}", inline(d));
        }
        // A referenced object's fields, one level deep.
        if expand
            && let Some(target) = schema["$ref"].as_str().and_then(|r| lookup(doc, r))
            && target["properties"].is_object()
        {
            fields(out, target);
        }
        out.push_str("</div>");
    }
}

/// A schema's properties as a table.
fn fields(out: &mut String, schema: &Node) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Node::as_str)
        .collect();
    out.push_str("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>");
    for (name, p) in properties {
        let mark = if required.contains(&name.as_str()) {
            " <span class=\"req\">required</span>"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td class=\"name\"><code>{}</code>{mark}</td><td class=\"type\">{}</td><td>{}{}</td></tr>",
            esc(name),
            type_label(p),
            inline(p["description"].as_str().unwrap_or("")),
            examples(p)
        );
    }
    out.push_str("</table>");
    if matches!(schema["additionalProperties"], Node::Bool(false)) {
        out.push_str("<p class=\"muted\">No other fields are accepted.</p>");
    }
}

fn examples(schema: &Node) -> String {
    let values: Vec<String> = schema["examples"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("<code>{}</code>", esc(&e.to_string())))
        .collect();
    if values.is_empty() {
        String::new()
    } else {
        format!(" <span class=\"muted\">e.g. {}</span>", values.join(", "))
    }
}

/// A short, linked type: `string`, `array of Message`, `QueryArgs | null`, …
fn type_label(schema: &Node) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    for (key, joiner) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " &amp; ")] {
        if let Some(items) = schema[key].as_array() {
            return items
                .iter()
                .map(type_label)
                .collect::<Vec<_>>()
                .join(joiner);
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        let list: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", esc(&v.to_string())))
            .collect();
        return format!("one of {}", list.join(", "));
    }
    let types: Vec<&str> = match &schema["type"] {
        Node::String(t) => vec![t.as_str()],
        Node::Array(ts) => ts.iter().filter_map(Node::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        return "any".into();
    }
    types
        .iter()
        .map(|t| match *t {
            "array" => format!("array of {}", type_label(&schema["items"])),
            "object" => match &schema["additionalProperties"] {
                Node::Object(_) => {
                    format!("object of {}", type_label(&schema["additionalProperties"]))
                }
                _ => "object".into(),
            },
            "string" => match schema["format"].as_str() {
                Some("binary") => "binary".into(),
                Some(f) => format!("string ({})", esc(f)),
                None => match schema["pattern"].as_str() {
                    Some(p) => format!("string <code>{}</code>", esc(p)),
                    None => "string".into(),
                },
            },
            other => esc(other),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn security_section(out: &mut String, doc: &Node) {
    out.push_str(
        "<section id=\"auth\"><h2>Authentication</h2><p>Each operation lists the scope it \
         needs and the credentials it accepts (any one of them).</p><table><tr><th>Name</th>\
         <th>Kind</th><th>Description</th></tr>",
    );
    for (name, s) in doc["components"]["securitySchemes"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let kind = match s["type"].as_str() {
            Some("http") => format!("HTTP {}", esc(s["scheme"].as_str().unwrap_or(""))),
            Some("apiKey") => format!(
                "{} <code>{}</code>",
                esc(s["in"].as_str().unwrap_or("")),
                esc(s["name"].as_str().unwrap_or(""))
            ),
            other => esc(other.unwrap_or("")),
        };
        let _ = write!(
            out,
            "<tr id=\"scheme-{0}\"><td class=\"name\"><code>{0}</code></td><td>{kind}</td><td>{1}</td></tr>",
            esc(name),
            inline(s["description"].as_str().unwrap_or(""))
        );
    }
    out.push_str("</table></section>");
}

fn schemas_section(out: &mut String, doc: &Node) {
    out.push_str("<section id=\"schemas\"><h2>Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let _ = write!(
            out,
            "<div class=\"schema\" id=\"schema-{0}\"><h3><code>{0}</code></h3>",
            esc(name)
        );
        if let Some(d) = schema["description"].as_str() {
            out.push_str(&markdown(d));
        }
        if schema["properties"].is_object() {
            fields(out, schema);
        } else if let Some(parts) = schema["allOf"].as_array() {
            // A flattened struct: each part's fields.
            for part in parts {
                match part["$ref"].as_str() {
                    Some(_) => {
                        let _ = write!(out, "<p>All the fields of {}, and:</p>", type_label(part));
                    }
                    None => fields(out, part),
                }
            }
        } else {
            let _ = write!(out, "<p class=\"type\">{}</p>", type_label(schema));
        }
        out.push_str("</div>");
    }
    out.push_str("</section>");
}

/// Follows a `$ref` (`#/components/...`), once.
fn resolve<'a>(doc: &'a Node, value: &'a Node) -> &'a Node {
    value["$ref"]
        .as_str()
        .and_then(|r| lookup(doc, r))
        .unwrap_or(value)
}

fn lookup<'a>(doc: &'a Node, reference: &str) -> Option<&'a Node> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The inline part of our descriptions: `code` and **bold**, everything else escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, piece) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(piece));
        } else {
            for (j, part) in piece.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{}</strong>", esc(part));
                } else {
                    out.push_str(&esc(part));
                }
            }
        }
    }
    out
}

/// Paragraphs (blank-line separated) of [`inline`] text.
fn markdown(text: &str) -> String {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", inline(p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup_is_escaped_and_rendered() {
        assert_eq!(
            inline("a `<b>` **c** & d"),
            "a <code>&lt;b&gt;</code> <strong>c</strong> &amp; d"
        );
        assert_eq!(markdown("one\n\ntwo"), "<p>one</p><p>two</p>");
    }

    #[test]
    fn types_are_labelled() {
        let label = |v: serde_json::Value| type_label(&serde_json::from_value(v).unwrap());
        assert_eq!(
            label(serde_json::json!({"type": ["string", "null"]})),
            "string | null"
        );
        assert_eq!(
            label(
                serde_json::json!({"type": "array", "items": {"$ref": "#/components/schemas/X"}})
            ),
            "array of <a href=\"#schema-X\">X</a>"
        );
        assert_eq!(label(serde_json::json!({})), "any");
    }
}
