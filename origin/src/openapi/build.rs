//! The small builder every operation in the document is written with: an [`Op`] collects its
//! parameters, bodies and responses, and the schemas they reference, so the document registers
//! every schema an operation names and no `$ref` dangles.

use allot_shared::{ApiError, ErrorBody, ErrorCode};
use serde_json::Value;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::extensions::{Extensions, ExtensionsBuilder};
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::{Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{
    ContentBuilder, Header, HeaderBuilder, HttpMethod, Ref, RefOr, Required, Response, ResponseBuilder, Server,
};
use utoipa::{IntoParams, ToSchema};

/// The content type of every JSON body.
pub const JSON: &str = "application/json";

/// A schema as registered in `components.schemas`: its name and its schema.
pub type NamedSchema = (String, RefOr<Schema>);

/// One operation being described, with the schemas it references.
pub struct Op {
    /// The HTTP method.
    pub method: HttpMethod,
    /// The path as the router matches it (`/v1/allocations/{id}`).
    pub path: &'static str,
    operation: OperationBuilder,
    /// Every schema the operation references, to register under `components.schemas`.
    pub schemas: Vec<NamedSchema>,
    extensions: Vec<(String, Value)>,
}

/// A `$ref` to `T`'s schema, recording `T` and the schemas it references in `schemas`.
pub fn schema_ref<T: ToSchema>(schemas: &mut Vec<NamedSchema>) -> RefOr<Schema> {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// A string schema with a description.
pub fn string(description: &str) -> Schema {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).into()
}

/// A string schema with a format (`uuid`, `date-time`) and a description.
pub fn formatted_string(format: &str, description: &str) -> Schema {
    use utoipa::openapi::schema::SchemaFormat;
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom(format.to_owned())))
        .description(Some(description))
        .into()
}

/// The schema of an `Idempotency-Key` header: 1-255 visible ASCII characters.
pub fn idempotency_key_schema(description: &str, example: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some("^[\\x21-\\x7E]+$"))
        .description(Some(description))
        .examples([example])
        .into()
}

/// A response header with a string schema.
pub fn header(description: &str) -> Header {
    HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(Type::String)).description(Some(description)).build()
}

/// An OpenAPI link to the operation `operation_id`, its `parameters` runtime expressions
/// (`$response.body#/allocation_id`).
pub fn link(operation_id: &str, parameters: &[(&str, &str)], description: &str) -> Link {
    // utoipa 5 writes the Link field `operation_id` as is, not as the spec's `operationId`, so
    // the name goes in through the flattened extensions map, which is written verbatim.
    // (`ExtensionsBuilder::add` would prefix it with `x-`; `from_iter` keeps the name.)
    let spelled = Extensions::from_iter([("operationId", operation_id)]);
    parameters
        .iter()
        .fold(LinkBuilder::new(), |b, (name, expression)| b.parameter(*name, *expression))
        .description(description)
        .extensions(Some(spelled))
        .build()
}

/// `X-Request-Id`: every response carries it.
pub fn request_id_header() -> Header {
    header("The request's id (the edge's, or one the origin made); quote it to support. Error bodies carry it too.")
}

/// Examples of error bodies (the wire form, with a sample request id), named by their code, and
/// numbered when a code repeats (`UNAUTHORIZED_1`, `UNAUTHORIZED_2`).
fn error_examples(errors: &[ApiError]) -> Vec<(String, RefOr<utoipa::openapi::example::Example>)> {
    errors
        .iter()
        .map(|error| {
            let code = error.code.as_str();
            let same: Vec<&ApiError> = errors.iter().filter(|e| e.code == error.code).collect();
            let name = match same.iter().position(|e| std::ptr::eq(*e, error)) {
                Some(i) if same.len() > 1 => format!("{code}_{}", i + 1),
                _ => code.to_owned(),
            };
            let body: ErrorBody = error.to_body(Some("8f14e45fceea467a9c1c5e8d3f0b2a71"));
            let value = serde_json::to_value(body).expect("an error body serialises");
            (name, ExampleBuilder::new().summary(error.message.clone()).value(Some(value)).into())
        })
        .collect()
}

/// An error response in the shared shape (`ErrorBody`), with one example per error given.
pub fn error_response(description: &str, examples: &[ApiError], schemas: &mut Vec<NamedSchema>) -> ResponseBuilder {
    error_response_with(ResponseBuilder::new().description(description), examples, schemas)
}

/// `response` given the shared error shape, an example of each error, `X-Request-Id`, and
/// `Retry-After` when one of the errors carries it.
pub fn error_response_with(
    response: ResponseBuilder,
    examples: &[ApiError],
    schemas: &mut Vec<NamedSchema>,
) -> ResponseBuilder {
    debug_assert!(!examples.is_empty(), "an error response shows at least one example");
    debug_assert!(
        examples.iter().all(|e| e.http_status() == examples[0].http_status()),
        "one response holds errors of one status"
    );
    let content = ContentBuilder::new()
        .schema(Some(schema_ref::<ErrorBody>(schemas)))
        .examples_from_iter(error_examples(examples))
        .build();
    let response = response.content(JSON, content).header("x-request-id", request_id_header());
    // The origin's error_response sets Retry-After on exactly these codes.
    let retryable = |c: ErrorCode| {
        matches!(c, ErrorCode::OriginUnavailable | ErrorCode::RateLimited | ErrorCode::IdempotencyInProgress)
    };
    if examples.iter().any(|e| retryable(e.code)) {
        let when = "Seconds to wait before retrying; sent with IDEMPOTENCY_IN_PROGRESS, RATE_LIMITED and \
                    ORIGIN_UNAVAILABLE.";
        response.header("retry-after", header(when))
    } else {
        response
    }
}

impl Op {
    /// An operation with its id (unique in the document) and a one-line summary.
    pub fn new(method: HttpMethod, path: &'static str, operation_id: &str, summary: &str) -> Self {
        let operation = OperationBuilder::new().operation_id(Some(operation_id)).summary(Some(summary));
        Self { method, path, operation, schemas: Vec::new(), extensions: Vec::new() }
    }

    /// The longer description (Markdown).
    pub fn description(mut self, text: &str) -> Self {
        self.operation = self.operation.description(Some(text));
        self
    }

    /// File the operation under a tag.
    pub fn tag(mut self, tag: &str) -> Self {
        self.operation = self.operation.tag(tag);
        self
    }

    /// The security scheme a caller must satisfy.
    pub fn security(mut self, scheme: &str) -> Self {
        self.operation = self.operation.security(SecurityRequirement::new::<_, [&str; 0], &str>(scheme, []));
        self
    }

    /// No credentials needed (overrides any document-wide requirement).
    pub fn open(mut self) -> Self {
        self.operation = self.operation.securities(Some([SecurityRequirement::default()]));
        self
    }

    /// Where the operation is served, when not at the document's servers.
    pub fn server(mut self, server: Server) -> Self {
        self.operation = self.operation.server(server);
        self
    }

    /// An `x-…` extension on the operation.
    pub fn extension(mut self, key: &str, value: Value) -> Self {
        debug_assert!(key.starts_with("x-"), "extensions start with x-: {key}");
        self.extensions.push((key.to_owned(), value));
        self
    }

    /// The finished operation and the schemas it references.
    pub fn build(self) -> (Operation, Vec<NamedSchema>) {
        let mut operation = self.operation;
        if !self.extensions.is_empty() {
            let extensions = self.extensions.into_iter().fold(ExtensionsBuilder::new(), |b, (k, v)| b.add(k, v));
            operation = operation.extensions(Some(extensions.build()));
        }
        (operation.build(), self.schemas)
    }

    /// A parameter, as built.
    pub fn parameter(mut self, parameter: Parameter) -> Self {
        self.operation = self.operation.parameter(parameter);
        self
    }

    /// A required path parameter.
    pub fn path_param(self, name: &str, schema: Schema) -> Self {
        let p = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(schema));
        self.parameter(p.build())
    }

    /// A request header.
    pub fn header_param(self, name: &str, required: bool, schema: Schema) -> Self {
        let required = if required { Required::True } else { Required::False };
        let p = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(required)
            .schema(Some(schema));
        self.parameter(p.build())
    }

    /// Query parameters from a type deriving `IntoParams`.
    pub fn query<T: IntoParams>(mut self) -> Self {
        for p in T::into_params(|| Some(ParameterIn::Query)) {
            self.operation = self.operation.parameter(p);
        }
        self
    }

    /// A required JSON request body of `T`, with an example.
    pub fn json_body<T: ToSchema>(mut self, description: &str, example: Value) -> Self {
        let content = ContentBuilder::new().schema(Some(schema_ref::<T>(&mut self.schemas))).example(Some(example));
        let body = RequestBodyBuilder::new()
            .description(Some(description))
            .required(Some(Required::True))
            .content(JSON, content.build());
        self.operation = self.operation.request_body(Some(body.build()));
        self
    }

    /// A required request body that is not JSON (a file, streamed), with its schema and an example.
    pub fn raw_body(mut self, content_type: &str, description: &str, schema: Schema, example: Value) -> Self {
        let content = ContentBuilder::new().schema(Some(schema)).example(Some(example));
        let body = RequestBodyBuilder::new()
            .description(Some(description))
            .required(Some(Required::True))
            .content(content_type, content.build());
        self.operation = self.operation.request_body(Some(body.build()));
        self
    }

    /// A response as built.
    pub fn response(mut self, status: u16, response: impl Into<RefOr<Response>>) -> Self {
        self.operation = self.operation.response(status.to_string(), response);
        self
    }

    /// A JSON response of `T` with an example; `headers` adds to `X-Request-Id`.
    pub fn json_response<T: ToSchema>(
        self,
        status: u16,
        description: &str,
        example: Value,
        headers: &[(&str, Header)],
    ) -> Self {
        self.json_response_linked::<T>(status, description, example, headers, Vec::new())
    }

    /// [`Op::json_response`] with OpenAPI `links`: the operations its answer leads to.
    pub fn json_response_linked<T: ToSchema>(
        mut self,
        status: u16,
        description: &str,
        example: Value,
        headers: &[(&str, Header)],
        links: Vec<(&str, Link)>,
    ) -> Self {
        let schema = schema_ref::<T>(&mut self.schemas);
        self.json_response_of(status, description, schema, example, headers, links)
    }

    /// A listing page of `T`: `{"items": [T…], "next_cursor": string | null}`.
    pub fn listing_response<T: ToSchema>(self, description: &str, example: Value) -> Self {
        self.listing_response_with::<T>(description, example, &[])
    }

    /// [`Op::listing_response`] with response headers besides `X-Request-Id`.
    pub fn listing_response_with<T: ToSchema>(
        mut self,
        description: &str,
        example: Value,
        headers: &[(&str, Header)],
    ) -> Self {
        let item = schema_ref::<T>(&mut self.schemas);
        let cursor = ObjectBuilder::new()
            .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
            .description(Some("Pass as `cursor` for the next page; null on the last page."));
        let page = ObjectBuilder::new()
            .property("items", ArrayBuilder::new().items(item))
            .required("items")
            .property("next_cursor", cursor)
            .required("next_cursor");
        self.json_response_of(200, description, page.into(), example, headers, Vec::new())
    }

    /// A JSON response whose schema is given inline.
    pub fn json_response_inline(
        self,
        status: u16,
        description: &str,
        schema: Schema,
        example: Value,
        headers: &[(&str, Header)],
    ) -> Self {
        self.json_response_of(status, description, schema.into(), example, headers, Vec::new())
    }

    fn json_response_of(
        self,
        status: u16,
        description: &str,
        schema: RefOr<Schema>,
        example: Value,
        headers: &[(&str, Header)],
        links: Vec<(&str, Link)>,
    ) -> Self {
        let content = ContentBuilder::new().schema(Some(schema)).example(Some(example)).build();
        let mut response = ResponseBuilder::new()
            .description(description)
            .content(JSON, content)
            .header("x-request-id", request_id_header());
        for (name, h) in headers {
            response = response.header(*name, h.clone());
        }
        for (name, link) in links {
            response = response.link(name, link);
        }
        self.response(status, response)
    }

    /// An error response in the shared shape, with an example of each error.
    pub fn error(mut self, description: &str, examples: &[ApiError]) -> Self {
        let status = examples.first().map(ApiError::http_status).unwrap_or(500);
        let response = error_response(description, examples, &mut self.schemas);
        self.response(status, response)
    }

    /// A response defined once under `components.responses`.
    pub fn shared_response(self, status: u16, name: &str) -> Self {
        self.response(status, Ref::from_response_name(name))
    }
}
