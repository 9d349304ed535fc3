//! Answers made by the balancer itself: the error page (nginx `error_page 500 502 503 504`) and
//! short pages for 400, 403 and 413.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::RespBody;

/// A built-in page for `status`, nginx style.
pub(crate) fn plain(status: StatusCode) -> Response<RespBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>ferrocat</center>\r\n</body>\r\n</html>\r\n"
    );
    page(status, Bytes::from(html))
}

/// The configured error page with `status`, or the built-in one.
pub(crate) fn error(status: StatusCode, error_page: Option<&Bytes>) -> Response<RespBody> {
    match error_page {
        Some(body) => page(status, body.clone()),
        None => plain(status),
    }
}

fn page(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
