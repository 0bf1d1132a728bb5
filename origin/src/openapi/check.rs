//! A small JSON Schema check, of the keywords the document uses: `$ref`, `type`, `required`,
//! `properties`, `additionalProperties: false`, `items`, `enum`, and the `uuid` and `date-time`
//! formats. The tests check the document's examples and the real answers with it.

use serde_json::Value;

/// `schema`, or what its `$ref` points at in `doc`.
pub fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("{r} does not resolve")),
        None => schema,
    }
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        other => panic!("a type this check does not know: {other}"),
    }
}

/// Where `value` breaks `schema`, if anywhere, each as `<at>: why` (`at` names the value).
pub fn violations(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        out.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let (Some("uuid"), Some(s)) = (schema["format"].as_str(), value.as_str())
        && uuid::Uuid::parse_str(s).is_err()
    {
        out.push(format!("{at}: {s} is not a UUID"));
    }
    if let (Some("date-time"), Some(s)) = (schema["format"].as_str(), value.as_str())
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_err()
    {
        out.push(format!("{at}: {s} is not an RFC 3339 time"));
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(required) {
                out.push(format!("{at}: {required} is missing"));
            }
        }
        for (key, v) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(s) => violations(doc, s, v, &format!("{at}.{key}"), out),
                None if schema["additionalProperties"] == false => out.push(format!("{at}: {key} is not documented")),
                None => {}
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            violations(doc, items, v, &format!("{at}[{i}]"), out);
        }
    }
}
