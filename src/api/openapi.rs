//! `/api/v1/openapi.json`, generated from the route table so the document and the routes
//! cannot disagree.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, Ref,
    Required, Type,
};

use super::handlers::{
    Bypass, CloneRequest, MemberRoles, NewConnection, NewMember, NewSite, NewWorkspace, Protection,
    RenameWorkspace, RotateSecret, SyncRequest,
};
use super::{Need, ROUTES};

fn method(m: &axum::http::Method) -> HttpMethod {
    match m.as_str() {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        other => unreachable!("no API route uses {other}"),
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

/// The OpenAPI 3.1 document of every route in [`ROUTES`].
pub fn openapi() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .operation_id(Some(format!(
                "{}{}",
                r.method.as_str().to_ascii_lowercase(),
                r.path.replace(['/', '{', '}', '-'], "_")
            )))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .response(
                r.ok.as_u16().to_string(),
                ResponseBuilder::new()
                    .description(r.ok.canonical_reason().unwrap_or("success"))
                    .build(),
            )
            .response("400", error_response("invalid request"))
            .response("401", error_response("missing, unknown or revoked token"));
        if let Need::Roles(roles) = r.need {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            op = op
                .description(Some(format!("Needs the role {}.", names.join(" or "))))
                .response("403", error_response("the caller lacks the role"))
                .response("404", error_response("no such workspace or site"));
        }
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        if let Some(schema) = r.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(schema)))
                            .build(),
                    )
                    .build(),
            ));
        }
        paths = paths.path(
            format!("/api/v1{}", r.path),
            PathItem::new(method(&r.method), op.build()),
        );
    }
    let error = ObjectBuilder::new()
        .property(
            "error",
            ObjectBuilder::new()
                .property("code", ObjectBuilder::new().schema_type(Type::String))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("message"),
        )
        .required("error")
        .build();
    let components = ComponentsBuilder::new()
        .schema("Error", error)
        .schema_from::<NewWorkspace>()
        .schema_from::<RenameWorkspace>()
        .schema_from::<NewMember>()
        .schema_from::<MemberRoles>()
        .schema_from::<NewConnection>()
        .schema_from::<RotateSecret>()
        .schema_from::<NewSite>()
        .schema_from::<Bypass>()
        .schema_from::<CloneRequest>()
        .schema_from::<SyncRequest>()
        .schema_from::<Protection>()
        .schema_from::<crate::access::AccessChange>()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("endor API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Workspaces, members, connections, sites and usage. Bearer tokens come from `endor user token LOGIN`.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}
