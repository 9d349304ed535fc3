//! Answers made by the balancer itself: the error page (nginx `error_page 500 502 503 504`) and
//! short pages for 400, 403, 405, 413, 414 and 431, written as complete HTTP/1.1 responses.

use http::StatusCode;

/// Appends a built-in page for `status`, nginx style; returns the body's length.
pub(crate) fn plain(out: &mut Vec<u8>, status: StatusCode, close: bool) -> usize {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>ferrocat</center>\r\n</body>\r\n</html>\r\n"
    );
    page(out, status, html.as_bytes(), close)
}

/// Appends the configured error page with `status`, or the built-in one; returns the body's
/// length.
pub(crate) fn error(
    out: &mut Vec<u8>,
    status: StatusCode,
    error_page: Option<&[u8]>,
    close: bool,
) -> usize {
    match error_page {
        Some(body) => page(out, status, body, close),
        None => plain(out, status, close),
    }
}

/// Appends an answer's status line and its `Date` header (`now`).
pub(crate) fn status_line(out: &mut Vec<u8>, status: StatusCode, now: std::time::SystemTime) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn page(out: &mut Vec<u8>, status: StatusCode, body: &[u8], close: bool) -> usize {
    status_line(out, status, std::time::SystemTime::now());
    out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
    crate::headers::put_content_length(out, body.len() as u64);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    body.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_status_date_length_and_close() {
        let mut out = Vec::new();
        plain(&mut out, StatusCode::PAYLOAD_TOO_LARGE, true);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{head}"
        );
        let date = head
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("a Date header");
        assert!(httpdate::parse_http_date(date).is_ok(), "bad date {date}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
    }
}
