//! `/api/v1/openapi.json`, generated from the route table so the document and the routes
//! cannot disagree: each row gives its success status and body schema (derived from the Rust
//! type the handler returns), its request body (required or not, with the validators' rules),
//! its query parameters, and the errors it sends beyond those of its kind; [`LINKS`] says which
//! operation's output feeds which.

use std::collections::BTreeMap;

use utoipa::ToSchema;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, Ref,
    RefOr, Required, Type,
};

use super::handlers::{self as h, NAME_PATTERN, PR_NUMBER_PATTERN, SITE_PATTERN, TAG_PATTERN};
use super::{ApiRoute, Need, ROUTES};

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

/// The operation id of a route: `get_sites__site_` style, from its method and path.
pub fn operation_id(r: &ApiRoute) -> String {
    format!(
        "{}{}",
        r.method.as_str().to_ascii_lowercase(),
        r.path.replace(['/', '{', '}', '-'], "_")
    )
}

/// Every status a route can send with the `error.code`s of each, beyond its success.
pub fn error_statuses(r: &ApiRoute) -> BTreeMap<u16, Vec<&'static str>> {
    let mut out: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    let has_params = r.path.contains('{');
    if r.body.is_some() || has_params || !r.query.is_empty() {
        out.entry(400).or_default().push("invalid");
    }
    if r.body.is_some() {
        out.entry(400).or_default().push("invalid_json");
        out.entry(413).or_default().push("too_large");
    }
    out.entry(401).or_default().push("unauthorized");
    if matches!(r.need, Need::Roles(_)) {
        out.entry(403).or_default().push("forbidden");
        out.entry(404).or_default().push("not_found");
    }
    for (status, codes) in r.errors {
        let e = out.entry(*status).or_default();
        for c in *codes {
            if !e.contains(c) {
                e.push(c);
            }
        }
    }
    out
}

fn error_meaning(code: &str) -> &'static str {
    match code {
        "invalid" => "a value breaks a rule (the message says which)",
        "invalid_json" => "the body is not JSON of the expected shape",
        "too_large" => "the body is over 64 KiB",
        "unauthorized" => "missing, unknown or revoked token",
        "forbidden" => "the caller lacks the role",
        "not_found" => "no such workspace, site, member, connection or token",
        "conflict" => "the name is taken",
        "last_owner" => "a workspace keeps at least one owner",
        "protected" => "the site is protected: send bypass_protection (audited)",
        "busy" => "another operation holds the site; try again when it is done",
        "not_configured" => "backups are off on this server (backups.repository is empty)",
        "backup_failed" => "the backup tool failed (its words are in the message)",
        "forge_failed" => {
            "the forge refused or failed to make, change or remove the webhook (nothing changed here)"
        }
        _ => "see the message",
    }
}

/// `{"error": {"code", "message"}}` with `code` one of `codes`.
fn error_response(codes: &[&str]) -> utoipa::openapi::Response {
    let schema = ObjectBuilder::new()
        .property(
            "error",
            ObjectBuilder::new()
                .property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(codes.iter().copied())),
                )
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("message"),
        )
        .required("error");
    let description = codes
        .iter()
        .map(|c| format!("`{c}`: {}", error_meaning(c)))
        .collect::<Vec<_>>()
        .join("; ");
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

/// The schema of a reply named in the route table (`Name` or `Name[]`).
fn reply_schema(reply: &str) -> RefOr<Schema> {
    match reply.strip_suffix("[]") {
        Some(item) => ArrayBuilder::new()
            .items(Ref::from_schema_name(item))
            .build()
            .into(),
        None => Ref::from_schema_name(reply).into(),
    }
}

/// A path parameter's rule.
fn path_param(name: &str) -> (Option<&'static str>, Option<&'static str>, &'static str) {
    match name {
        "ws" => (Some(NAME_PATTERN), None, "a workspace name"),
        "login" => (Some(NAME_PATTERN), None, "a member's login"),
        "site" => (Some(SITE_PATTERN), None, "a site name"),
        "tag" => (Some(TAG_PATTERN), None, "a tag"),
        "token_id" => (None, Some("uuid"), "a token's id (from GET /tokens)"),
        "number" => (
            Some(PR_NUMBER_PATTERN),
            None,
            "the pull/merge request's number",
        ),
        "backup" => (
            Some("^[0-9a-fA-F-]{8,36}$"),
            None,
            "a backup's id, or 8 or more of its first characters, or of its snapshot's id",
        ),
        "connection_id" => (
            None,
            Some("uuid"),
            "a connection's id (from GET or POST .../connections)",
        ),
        _ => (None, None, ""),
    }
}

/// One link: from the success reply of (method, path), to the operation (method, path), its
/// parameters filled from the reply or the request.
type LinkDoc = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Where one operation's output feeds another (OpenAPI links).
pub static LINKS: &[LinkDoc] = &[
    (
        "POST",
        "/workspaces",
        "Members",
        "GET",
        "/workspaces/{ws}/members",
        &[("ws", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces",
        "Sites",
        "GET",
        "/workspaces/{ws}/sites",
        &[("ws", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces",
        "CreateSite",
        "POST",
        "/workspaces/{ws}/sites",
        &[("ws", "$response.body#/name")],
    ),
    (
        "PATCH",
        "/workspaces/{ws}",
        "Members",
        "GET",
        "/workspaces/{ws}/members",
        &[("ws", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces/{ws}/members",
        "SetRoles",
        "PUT",
        "/workspaces/{ws}/members/{login}",
        &[
            ("ws", "$request.path.ws"),
            ("login", "$response.body#/login"),
        ],
    ),
    (
        "POST",
        "/workspaces/{ws}/members",
        "Remove",
        "DELETE",
        "/workspaces/{ws}/members/{login}",
        &[
            ("ws", "$request.path.ws"),
            ("login", "$response.body#/login"),
        ],
    ),
    (
        "POST",
        "/workspaces/{ws}/connections",
        "Rotate",
        "POST",
        "/workspaces/{ws}/connections/{connection_id}/rotate-secret",
        &[
            ("ws", "$request.path.ws"),
            ("connection_id", "$response.body#/connection_id"),
        ],
    ),
    (
        "POST",
        "/workspaces/{ws}/connections",
        "Delete",
        "DELETE",
        "/workspaces/{ws}/connections/{connection_id}",
        &[
            ("ws", "$request.path.ws"),
            ("connection_id", "$response.body#/connection_id"),
        ],
    ),
    (
        "POST",
        "/workspaces/{ws}/sites",
        "Show",
        "GET",
        "/sites/{site}",
        &[("site", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces/{ws}/sites",
        "Snapshot",
        "POST",
        "/sites/{site}/snapshot",
        &[("site", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces/{ws}/sites",
        "Clone",
        "POST",
        "/sites/{site}/clone",
        &[("site", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces/{ws}/sites",
        "Access",
        "GET",
        "/sites/{site}/access",
        &[("site", "$response.body#/name")],
    ),
    (
        "POST",
        "/workspaces/{ws}/sites",
        "Delete",
        "DELETE",
        "/sites/{site}",
        &[("site", "$response.body#/name")],
    ),
    (
        "POST",
        "/sites/{site}/clone",
        "ShowClone",
        "GET",
        "/sites/{site}",
        &[("site", "$response.body#/site")],
    ),
    (
        "POST",
        "/sites/{site}/clone",
        "DeleteClone",
        "DELETE",
        "/sites/{site}",
        &[("site", "$response.body#/site")],
    ),
    (
        "POST",
        "/sites/{site}/snapshot",
        "CloneSnapshot",
        "POST",
        "/sites/{site}/clone",
        &[("site", "$response.body#/site")],
    ),
    (
        "PUT",
        "/sites/{site}/tags/{tag}",
        "Remove",
        "DELETE",
        "/sites/{site}/tags/{tag}",
        &[("site", "$request.path.site"), ("tag", "$request.path.tag")],
    ),
];

/// Add `T`'s schema and every schema it refers to.
fn with<T: ToSchema>(mut c: ComponentsBuilder) -> ComponentsBuilder {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    for (name, schema) in nested {
        c = c.schema(name, schema);
    }
    c.schema(T::name(), T::schema())
}

/// The OpenAPI 3.1 document of every route in [`ROUTES`], as JSON.
pub fn openapi() -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).expect("the document serializes");
    // utoipa 5 writes a Link's fields in snake case; OpenAPI names them in camel case.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(|i| i.as_object_mut())
            .flat_map(|i| i.values_mut())
        {
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            for link in responses
                .values_mut()
                .filter_map(|r| r.get_mut("links").and_then(|l| l.as_object_mut()))
                .flat_map(|l| l.values_mut())
                .filter_map(|l| l.as_object_mut())
            {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.into(), v);
                    }
                }
            }
        }
    }
    doc
}

fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in ROUTES {
        let mut ok = ResponseBuilder::new().description(r.summary);
        if let Some(reply) = r.reply {
            ok = ok.content(
                r.media,
                ContentBuilder::new()
                    .schema(Some(reply_schema(reply)))
                    .build(),
            );
        }
        for (from_m, from_p, name, to_m, to_p, params) in LINKS {
            if *from_m == r.method.as_str() && *from_p == r.path {
                let target = ROUTES
                    .iter()
                    .find(|t| t.method.as_str() == *to_m && t.path == *to_p)
                    .expect("a link names a route of the table");
                let mut link = LinkBuilder::new().operation_id(operation_id(target));
                for (p, expr) in *params {
                    link = link.parameter(*p, *expr);
                }
                ok = ok.link(*name, link.build());
            }
        }
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .operation_id(Some(operation_id(r)))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .response(r.ok.as_u16().to_string(), ok.build());
        for (status, codes) in error_statuses(r) {
            op = op.response(status.to_string(), error_response(&codes));
        }
        if let Need::Roles(roles) = r.need {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            op = op.description(Some(format!("Needs the role {}.", names.join(" or "))));
        }
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (pattern, format, description) = path_param(name);
                let mut schema = ObjectBuilder::new().schema_type(Type::String);
                if let Some(p) = pattern {
                    schema = schema.pattern(Some(p));
                }
                if let Some(f) = format {
                    schema = schema.format(Some(utoipa::openapi::SchemaFormat::Custom(f.into())));
                }
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some(description))
                        .schema(Some(schema)),
                );
            }
        }
        for (name, pattern, description) in r.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(*description))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(*pattern)),
                    )),
            );
        }
        if let Some(body) = r.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(if body.required {
                        Required::True
                    } else {
                        Required::False
                    }))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(body.schema)))
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
    let mut c = ComponentsBuilder::new().schema("Error", error);
    // Request bodies.
    c = with::<h::NewWorkspace>(c);
    c = with::<h::RenameWorkspace>(c);
    c = with::<h::SettingsChange>(c);
    c = with::<h::ExecArg>(c);
    c = with::<h::ExecRequest>(c);
    c = with::<h::ExecEvent>(c);
    c = with::<h::NewMember>(c);
    c = with::<h::MemberRoles>(c);
    c = with::<h::NewConnection>(c);
    c = with::<h::RotateSecret>(c);
    c = with::<h::NewSite>(c);
    c = with::<h::Bypass>(c);
    c = with::<h::CloneRequest>(c);
    c = with::<h::SyncRequest>(c);
    c = with::<h::Protection>(c);
    c = with::<h::ExtendRequest>(c);
    c = with::<h::ExtendedView>(c);
    c = with::<crate::access::AccessChange>(c);
    c = with::<super::backups::NewBackup>(c);
    c = with::<super::backups::RestoreRequest>(c);
    c = with::<super::backups::ReadRequest>(c);
    c = with::<super::backups::ReadFrom>(c);
    c = with::<super::backups::RetentionChange>(c);
    c = with::<super::backups::BackupSettingsChange>(c);
    // Replies.
    c = with::<h::Me>(c);
    c = with::<h::WorkspaceRoles>(c);
    c = with::<h::Member>(c);
    c = with::<h::Membership>(c);
    c = with::<h::SiteTags>(c);
    c = with::<h::SiteProtection>(c);
    c = with::<crate::store::ApiToken>(c);
    c = with::<crate::store::Workspace>(c);
    c = with::<crate::service::ConnectionInfo>(c);
    c = with::<crate::service::Connected>(c);
    c = with::<crate::service::WorkspaceSettingsView>(c);
    c = with::<crate::service::Rotated>(c);
    c = with::<crate::sites::SiteDetails>(c);
    c = with::<crate::sites::OperationReport>(c);
    c = with::<crate::previews::story::PreviewLine>(c);
    c = with::<crate::previews::story::PreviewStory>(c);
    c = with::<crate::usage::UsageReport>(c);
    c = with::<crate::access::AccessView>(c);
    c = with::<h::LogLine>(c);
    c = with::<crate::store::Backup>(c);
    c = with::<crate::store::RetentionRow>(c);
    c = with::<crate::config::Retention>(c);
    c = with::<crate::backups::Restored>(c);
    c = with::<crate::backups::Verified>(c);
    c = with::<crate::backups::DrillReport>(c);
    c = with::<crate::backups::Scheduled>(c);
    c = with::<crate::backups::RetentionView>(c);
    c = with::<super::backups::BackupSettings>(c);
    let components = c
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
                    "Workspaces, members, connections, sites and usage. Bearer tokens come from `endor user token LOGIN`. Every error is `{\"error\": {\"code\", \"message\"}}`; each response lists the codes it can carry.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}
