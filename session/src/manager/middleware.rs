//! The actix-web middleware that runs the session life cycle per request.

use std::cell::RefCell;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use actix_web::body::MessageBody;
use actix_web::cookie::Cookie;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, HttpMessage};

use super::request::CookieAction;
use super::session::Session;
use super::SessionManager;

/// Wraps an `App`: `App::new().wrap(manager.middleware())`.
#[derive(Clone, Debug)]
pub struct SessionMiddleware {
    manager: SessionManager,
}

impl SessionMiddleware {
    /// Middleware for `manager`.
    pub fn new(manager: SessionManager) -> Self {
        SessionMiddleware { manager }
    }
}

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service: Rc::new(service),
            manager: self.manager.clone(),
        }))
    }
}

/// The per-worker service created by [`SessionMiddleware`].
pub struct SessionService<S> {
    service: Rc<S>,
    manager: SessionManager,
}

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let manager = self.manager.clone();
        Box::pin(async move {
            let inner = &manager.0;
            if inner.is_ignored(req.path()) {
                inner.stats.requests_ignored.fetch_add(1, Relaxed);
                return service.call(req).await;
            }
            // begin/finish boxed apart: this future (boxed per request) stays small.
            let (state, begun) = Box::pin(inner.begin(&req)).await;
            let state = Rc::new(RefCell::new(state));
            req.extensions_mut().insert(Session(state.clone()));
            let mut res = service.call(req).await?;
            // Take the state out of the RefCell: nothing else holds a borrow now.
            let mut st = std::mem::take(&mut *state.borrow_mut());
            let action = Box::pin(inner.finish(&mut st, begun)).await;
            let settings = &inner.settings;
            match action {
                CookieAction::Keep => {}
                CookieAction::Set(id) => {
                    let cookie = session_cookie(settings, inner.signer.sign(&id));
                    res.response_mut().add_cookie(&cookie)?;
                }
                CookieAction::Remove => {
                    // The same Path and Domain, or the browser keeps the old cookie.
                    let mut cookie = session_cookie(settings, String::new());
                    cookie.make_removal();
                    res.response_mut().add_cookie(&cookie)?;
                }
            }
            Ok(res)
        })
    }
}

/// The session cookie with `value` and the configured attributes.
fn session_cookie(settings: &crate::config::SessionSettings, value: String) -> Cookie<'static> {
    let mut b = Cookie::build(settings.cookie_name.clone(), value)
        .path(settings.cookie_path.clone())
        .http_only(true)
        .same_site(settings.cookie_same_site)
        .secure(settings.cookie_secure);
    if let Some(d) = &settings.cookie_domain {
        b = b.domain(d.clone());
    }
    b.finish()
}
