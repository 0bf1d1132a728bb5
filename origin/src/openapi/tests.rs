//! The document against the code: the operator routes and their roles, references, error
//! examples, and the committed copy.

use std::collections::BTreeSet;

use allot_shared::ErrorBody;
use serde_json::Value;

use super::*;
use crate::http::ops::ROUTES;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn doc() -> Value {
    serde_json::to_value(document()).unwrap()
}

/// Every (METHOD, path, operation) in the document.
fn documented(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

#[test]
fn every_operator_route_is_documented_with_its_least_role() {
    let doc = doc();
    let ops: Vec<_> = documented(&doc).into_iter().filter(|(_, p, _)| p.starts_with("/ops/")).collect();
    for route in ROUTES {
        let found = ops.iter().find(|(m, p, _)| m == route.method && p == route.path);
        let Some((_, _, op)) = found else {
            panic!(
                "{} {} is in ROUTES but not in the OpenAPI document: describe it in origin/src/openapi/ops.rs",
                route.method, route.path
            );
        };
        assert_eq!(
            op[LEAST_ROLE_EXTENSION],
            route.role.as_str(),
            "{} {}: the document states another least role than ROUTES",
            route.method,
            route.path
        );
        let description = op["description"].as_str().unwrap_or("");
        assert!(
            description.starts_with(&format!("**Least role: {}.**", route.role.as_str())),
            "{} {}: the description must start with its least role: {description}",
            route.method,
            route.path
        );
    }
    for (method, path, _) in &ops {
        assert!(
            ROUTES.iter().any(|r| r.method == method && r.path == path),
            "{method} {path} is documented but not in ROUTES (it would answer 404)"
        );
    }
}

#[test]
fn operator_operations_need_the_operator_token_and_answer_401_and_403_in_the_shared_shape() {
    let doc = doc();
    for (method, path, op) in documented(&doc) {
        let responses = &op["responses"];
        if path.starts_with("/ops/") {
            assert_eq!(op["security"], serde_json::json!([{ OPERATOR_TOKEN_SCHEME: [] }]), "{method} {path}");
            assert_eq!(op["tags"], serde_json::json!([TAG_OPERATORS]), "{method} {path}");
            for (status, name) in [("401", RESPONSE_OPS_UNAUTHORIZED), ("403", RESPONSE_OPS_FORBIDDEN)] {
                assert_eq!(responses[status]["$ref"], format!("#/components/responses/{name}"), "{method} {path}");
            }
        } else if path.starts_with("/v1/") && path != "/v1/openapi.json" {
            assert_eq!(op["security"], serde_json::json!([{ API_KEY_SCHEME: [] }]), "{method} {path}");
            for status in ["401", "403", "429", "500", "503"] {
                assert!(responses.get(status).is_some(), "{method} {path} does not document {status}");
            }
        } else {
            assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path} needs no credentials");
        }
        assert!(op["operationId"].is_string() && op["summary"].is_string(), "{method} {path}");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes[OPERATOR_TOKEN_SCHEME]["scheme"], "bearer");
    assert_eq!(schemes[API_KEY_SCHEME]["scheme"], "bearer");
}

fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_operation_ids_are_unique() {
    let doc = doc();
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    assert!(all.contains("#/components/schemas/ErrorBody"));
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    let ids: Vec<String> =
        documented(&doc).iter().map(|(_, _, op)| op["operationId"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");
}

/// Every error response: (where, status, content).
fn error_contents(doc: &Value) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let mut visit = |place: String, status: &str, response: &Value| {
        let content = &response["content"]["application/json"];
        if content["schema"]["$ref"] == "#/components/schemas/ErrorBody" {
            out.push((place, status.parse().unwrap(), content.clone()));
        }
    };
    for (method, path, op) in documented(doc) {
        for (status, response) in op["responses"].as_object().unwrap() {
            visit(format!("{method} {path}"), status, response);
        }
    }
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        let status = match name.as_str() {
            RESPONSE_OPS_UNAUTHORIZED => "401",
            RESPONSE_OPS_FORBIDDEN => "403",
            RESPONSE_INTERNAL => "500",
            RESPONSE_UNAVAILABLE => "503",
            other => panic!("a shared response {other} this test does not know the status of"),
        };
        visit(name.clone(), status, response);
    }
    out
}

#[test]
fn error_examples_are_error_bodies_with_their_status() {
    let doc = doc();
    let errors = error_contents(&doc);
    assert!(errors.len() > 20, "only {} error responses found", errors.len());
    for (place, status, content) in errors {
        let examples = content["examples"].as_object().unwrap_or_else(|| panic!("{place} {status} has no examples"));
        assert!(!examples.is_empty(), "{place} {status}");
        for (name, example) in examples {
            let body: ErrorBody = serde_json::from_value(example["value"].clone())
                .unwrap_or_else(|e| panic!("{place} {status} {name}: not an error body: {e}"));
            assert_eq!(body.error.code.http_status(), status, "{place}: {name} is not a {status}");
            let code = body.error.code.as_str();
            assert!(
                name == code || name.starts_with(&format!("{code}_")),
                "{place}: example {name} is not named by its code {code}"
            );
        }
    }
}

#[test]
fn the_committed_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == pretty_json(),
        "docs/openapi.json differs from the document the code builds; regenerate it with\n    \
         cargo run -p allot-origin --bin allot -- openapi > docs/openapi.json\nand commit it"
    );
}

#[test]
fn every_example_matches_its_schema() {
    let doc = doc();
    let mut checked = 0;
    let mut out = Vec::new();
    for (method, path, op) in documented(&doc) {
        let mut contents = vec![("request".to_owned(), &op["requestBody"]["content"]["application/json"])];
        for (status, response) in op["responses"].as_object().unwrap() {
            contents.push((status.clone(), &response["content"]["application/json"]));
        }
        for (place, content) in contents {
            let at = format!("{method} {path} {place}");
            if let Some(example) = content.get("example") {
                check::violations(&doc, &content["schema"], example, &at, &mut out);
                checked += 1;
            }
            for (name, example) in content["examples"].as_object().into_iter().flatten() {
                check::violations(&doc, &content["schema"], &example["value"], &format!("{at} {name}"), &mut out);
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} examples found");
    assert!(out.is_empty(), "examples that do not match their schemas: {out:#?}");
}

#[test]
fn every_link_names_an_operation_and_its_parameters() {
    let doc = doc();
    let operations = documented(&doc);
    let mut links = 0;
    for (method, path, op) in &operations {
        for (status, response) in op["responses"].as_object().unwrap() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                let target =
                    link["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} {name}: no operationId"));
                let (_, _, target_op) = operations
                    .iter()
                    .find(|(_, _, o)| o["operationId"] == target)
                    .unwrap_or_else(|| panic!("{method} {path} {status} {name}: no operation {target}"));
                for (parameter, expression) in link["parameters"].as_object().unwrap() {
                    let declared =
                        target_op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == *parameter);
                    assert!(declared, "{name}: {target} has no parameter {parameter}");
                    let pointer = expression.as_str().unwrap().strip_prefix("$response.body#").unwrap();
                    let example = &response["content"]["application/json"]["example"];
                    assert!(example.pointer(pointer).is_some(), "{name}: the example has no {pointer}");
                }
                links += 1;
            }
        }
    }
    assert!(links >= 2, "create links to get and list: {links}");
}

#[test]
fn the_callers_document_is_the_public_operations_reached_through_the_edge() {
    let public = serde_json::to_value(public_document()).unwrap();
    let whole = doc();
    let mut all = BTreeSet::new();
    refs(&public, &mut all);
    for r in all {
        assert!(
            public.pointer(r.strip_prefix('#').unwrap()).is_some(),
            "{r} does not resolve in the callers' document"
        );
    }
    for (method, path, op) in documented(&public) {
        assert!(!path.starts_with("/ops/") && path != "/livez", "{method} {path} is not reached through the edge");
        assert_eq!(op, whole["paths"][&path][method.to_lowercase()], "{method} {path} is described as in the whole");
    }
    assert_eq!(documented(&public).len(), 8);
    assert!(public["components"]["securitySchemes"].get(OPERATOR_TOKEN_SCHEME).is_none());
    assert!(public["components"]["responses"].get(RESPONSE_OPS_FORBIDDEN).is_none());
    assert!(public["tags"].as_array().unwrap().iter().all(|t| t["name"] != TAG_OPERATORS));
}
