//! Keeps `docs/api.md` true to the code: every error code appears with its
//! status on one table row, and every route of the router is documented.
//!
//! The route list below is checked against `src/lib.rs` in both directions
//! (each listed route is registered there, each registered route is listed),
//! and `ErrorCode::ALL` against the variants declared in `src/error.rs`, so
//! neither list can drift from the code. The OpenAPI document served at
//! `/v1/openapi.json` describes exactly the same routes (its answers are
//! checked against the server's by `tests/python/test_openapi.py`).

use std::collections::BTreeSet;

use herald_server::ErrorCode;

/// Every route the router registers: method and path, as written in lib.rs.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/events"),
    ("POST", "/v1/publish"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/users"),
    ("GET", "/v1/users/{id}"),
    ("DELETE", "/v1/users/{id}/connections"),
    ("GET", "/v1/topics/{*topic}"),
    ("GET", "/v1/topics"),
    ("GET", "/v1/stats/stream"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/herald.js"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/"),
    ("GET", "/dashboard/{file}"),
    ("GET", "/demo"),
];

fn read(relative: &str) -> String {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn api_md() -> String {
    read("../../docs/api.md")
}

/// The cells of a Markdown table row, trimmed; `None` for any other line.
fn table_cells(line: &str) -> Option<Vec<&str>> {
    let row = line.trim().strip_prefix('|')?;
    let row = row.strip_suffix('|').unwrap_or(row);
    Some(row.split('|').map(str::trim).collect())
}

/// `(method, path)` of every `.route("path", method(` call in `source`.
fn registered_routes(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(after_quote) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some((path, after_path)) = after_quote.split_once('"') else {
            continue;
        };
        let Some(after_comma) = after_path.trim_start().strip_prefix(',') else {
            continue;
        };
        let after_comma = after_comma.trim_start();
        let method: String = after_comma
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if after_comma[method.len()..].starts_with('(') {
            routes.insert((method.to_ascii_uppercase(), path.to_string()));
        }
    }
    routes
}

/// A router path as the reference writes it: `{*topic}` is `{topic}`.
fn documented_path(router_path: &str) -> String {
    router_path.replace("{*", "{")
}

#[test]
fn every_error_code_is_on_a_table_row_with_its_status() {
    let doc = api_md();
    let rows: Vec<Vec<&str>> = doc.lines().filter_map(table_cells).collect();
    for code in ErrorCode::ALL {
        let name = format!("`{}`", code.as_str());
        let status = code.status().as_u16().to_string();
        let found = rows.iter().any(|cells| {
            cells.contains(&name.as_str())
                && cells.iter().any(|c| c.trim_matches('`') == status.as_str())
        });
        assert!(
            found,
            "docs/api.md has no table row with {name} and its status {status}"
        );
    }
}

#[test]
fn error_code_all_lists_every_declared_variant() {
    let source = read("src/error.rs");
    let start = source
        .find("pub enum ErrorCode {")
        .expect("error.rs declares ErrorCode");
    let body = &source[start..];
    let body = &body[body.find('{').map_or(0, |i| i + 1)..body.find('}').unwrap_or(0)];
    let declared: BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#') && !l.is_empty())
        .map(|l| l.trim_end_matches(',').to_string())
        .collect();
    let listed: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| format!("{c:?}")).collect();
    assert_eq!(
        listed.len(),
        ErrorCode::ALL.len(),
        "ErrorCode::ALL repeats a code"
    );
    assert_eq!(
        declared, listed,
        "ErrorCode::ALL must list exactly the variants declared in error.rs"
    );
}

#[test]
fn the_route_list_is_the_router_s() {
    let lib = read("src/lib.rs");
    let registered = registered_routes(&lib);
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_string(), (*p).to_string()))
        .collect();
    for (method, path) in ROUTES {
        let call = format!(".route(\"{path}\", {}(", method.to_ascii_lowercase());
        assert!(lib.contains(&call), "lib.rs does not register {call}");
    }
    assert_eq!(
        registered, listed,
        "the routes registered in lib.rs differ from this test's list"
    );
}

#[test]
fn every_route_is_documented() {
    let doc = api_md();
    let rows: Vec<Vec<&str>> = doc.lines().filter_map(table_cells).collect();
    for (method, path) in ROUTES {
        let path = documented_path(path);
        let in_heading_or_text = doc.contains(&format!("{method} {path}`"));
        let in_route_table = rows.iter().any(|cells| {
            cells.first() == Some(&format!("`{method}`").as_str())
                && cells
                    .get(1)
                    .is_some_and(|c| c.starts_with(&format!("`{path}`")))
        });
        assert!(
            in_heading_or_text && in_route_table,
            "docs/api.md must name `{method} {path}` in its text and in the route table \
             (text: {in_heading_or_text}, table: {in_route_table})"
        );
    }
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let spec: serde_json::Value =
        serde_json::from_str(&read("src/openapi.json")).expect("openapi.json is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("openapi.json has paths");
    let described: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .filter(|method| method.as_str() != "parameters")
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_string(), documented_path(p)))
        .collect();
    assert_eq!(
        described, routes,
        "openapi.json must describe exactly the router's routes"
    );
}
