//! The ferrocat demo app, served by `ferrocat app` and `ferrocat all-in-one`.
//!
//! Routes (see the README's walk-through):
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | login form, or "Hello NAME, visit N, served by NODE" |
//! | `POST /login` (`username`) | stores the user, renews the session id, redirects to `/` |
//! | `GET /api/me` | `{"user": .., "visits": N, "node": ..}`; `visits` + 1 per call |
//! | `POST /api/cart` (`item`) / `GET /api/cart` | a list kept in the session |
//! | `POST /logout` | invalidates the session |
//! | `GET /health` | 200 while the node serves |
//! | `GET /static/style.css` | a static file; never touches the session |
//!
//! It uses only [`ferrocat_session::Session`], so it runs unchanged in sticky
//! and non-sticky mode and over every backend. The runnable example
//! `examples/actix_session_store.rs` shows the store under plain actix-session.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use actix_web::http::header;
use actix_web::{guard, web, HttpResponse, Responder};
use ferrocat_session::Session;
use serde::Deserialize;

/// The app node's name, shown in pages and in `X-Ferrocat-Node`.
#[derive(Debug, Clone)]
pub struct NodeName(pub String);

/// Longest accepted user name or cart item.
pub const MAX_FIELD_LEN: usize = 64;
/// Most items a cart keeps.
pub const MAX_CART_ITEMS: usize = 1000;

/// The demo's stylesheet, served from `/static/style.css`.
pub const STYLE_CSS: &str = include_str!("../static/style.css");

/// Registers the demo routes.
///
/// Every `GET` route also answers `HEAD` (the same handler; actix sends the
/// headers without the body), as a servlet container does. A known path asked
/// with a method it does not serve gets `405 Method Not Allowed` with an
/// `Allow` header, not a 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(get_or_head().to(index)))
        .service(web::resource("/login").route(web::post().to(login)))
        .service(web::resource("/logout").route(web::post().to(logout)))
        .service(web::resource("/api/me").route(get_or_head().to(me)))
        .service(
            web::resource("/api/cart")
                .route(get_or_head().to(cart))
                .route(web::post().to(add_to_cart)),
        )
        .service(web::resource("/health").route(get_or_head().to(health)))
        .service(web::resource("/static/style.css").route(get_or_head().to(style)));
}

/// A route for `GET` and `HEAD`.
fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

fn node_name(node: &web::Data<NodeName>) -> &str {
    &node.0
}

/// Escapes text for HTML.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

fn bump_visits(session: &Session) -> actix_web::Result<u64> {
    let visits = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", &visits)?;
    Ok(visits)
}

async fn index(session: Session, node: web::Data<NodeName>) -> actix_web::Result<HttpResponse> {
    let node = escape_html(node_name(&node));
    let body = match session.get::<String>("user")? {
        Some(user) => {
            let visits = bump_visits(&session)?;
            format!(
                "<p class=\"hello\">Hello {}, visit {visits}, served by {node}</p>\
                 <form method=\"post\" action=\"/logout\"><button>Log out</button></form>",
                escape_html(&user)
            )
        }
        None => format!(
            "<p>Served by {node}. Log in to start a session.</p>\
             <form method=\"post\" action=\"/login\">\
             <input name=\"username\" placeholder=\"your name\" maxlength=\"{MAX_FIELD_LEN}\" required>\
             <button>Log in</button></form>"
        ),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>ferrocat demo</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head>\
         <body><h1>ferrocat demo</h1>{body}</body></html>"
        )))
}

/// `POST /login` form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The user to log in as.
    pub username: String,
}

fn valid_field(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.chars().count() <= MAX_FIELD_LEN && !s.chars().any(char::is_control)
}

async fn login(session: Session, form: web::Form<LoginForm>) -> actix_web::Result<HttpResponse> {
    if !valid_field(&form.username) {
        return Ok(HttpResponse::BadRequest().body(format!(
            "username must be 1 to {MAX_FIELD_LEN} printable characters"
        )));
    }
    session.insert("user", form.username.trim())?;
    // A new id on login: a session id known before login is worthless after it.
    session.renew();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .finish())
}

async fn logout(session: Session) -> impl Responder {
    session.invalidate();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .finish()
}

async fn me(session: Session, node: web::Data<NodeName>) -> actix_web::Result<HttpResponse> {
    let user = session.get::<String>("user")?;
    let visits = bump_visits(&session)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": user,
        "visits": visits,
        "node": node_name(&node),
    })))
}

/// `POST /api/cart` form.
#[derive(Debug, Deserialize)]
pub struct CartForm {
    /// The item to add.
    pub item: String,
}

async fn cart(session: Session) -> actix_web::Result<HttpResponse> {
    let items = session.get::<Vec<String>>("cart")?.unwrap_or_default();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn add_to_cart(
    session: Session,
    form: web::Form<CartForm>,
) -> actix_web::Result<HttpResponse> {
    if !valid_field(&form.item) {
        return Ok(HttpResponse::BadRequest().body(format!(
            "item must be 1 to {MAX_FIELD_LEN} printable characters"
        )));
    }
    let mut items = session.get::<Vec<String>>("cart")?.unwrap_or_default();
    if items.len() >= MAX_CART_ITEMS {
        return Ok(HttpResponse::UnprocessableEntity().body("cart is full"));
    }
    items.push(form.item.trim().to_owned());
    session.insert("cart", &items)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn health() -> impl Responder {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn style() -> impl Responder {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape_html("<b>\"x\"&'"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;"
        );
    }

    #[test]
    fn fields_are_bounded() {
        assert!(valid_field("alice"));
        assert!(!valid_field(""));
        assert!(!valid_field("   "));
        assert!(!valid_field(&"a".repeat(65)));
        assert!(!valid_field("a\nb"));
    }
}
