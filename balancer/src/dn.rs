//! Distinguished names as text (nginx `$ssl_client_s_dn` and `$ssl_client_i_dn`): RFC 2253
//! order and escaping, as OpenSSL prints them for nginx: the last RDN first, `+` between the
//! attributes of one RDN, `,` between RDNs; `CN`, `O`, ... for the common attribute types, the
//! dotted OID for others; `, + " \ < > ;` and a leading `#` or space or trailing space escaped
//! with `\`, control characters and bytes beyond ASCII as `\XX`. A value of a type that is not
//! a string is `#` and its DER in hex. The input is the DER content of a `Name` (a sequence of
//! RDN sets) as rustls-webpki hands it out; anything malformed gives `None`.

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The short name of an attribute type (DER content of its OID), if it has one.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x0c] => "title",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

/// An OID's DER content in dotted form.
fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut value: u64 = 0;
    for &b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            out.push_str(&format!(".{value}"));
            value = 0;
        }
    }
    Some(out)
}

/// Appends `text` escaped as RFC 2253 asks (see the module's notes).
fn escape_into(out: &mut String, text: &str) {
    let last = text.len().saturating_sub(1);
    for (i, ch) in text.char_indices() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(ch, '#' | ' '))
            || (i == last && ch == ' ');
        if special {
            out.push('\\');
            out.push(ch);
        } else if ch.is_ascii_control() || !ch.is_ascii() {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(ch);
        }
    }
}

/// A string value of `tag` as text; `None` for a type that is not a string.
fn string_value(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => Some(String::from_utf8_lossy(content).into_owned()),
        // TeletexString (read as Latin-1, as OpenSSL does)
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString (UTF-16BE)
        0x1e if content.len() & 1 == 0 => {
            let units = content.chunks(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
            Some(
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect(),
            )
        }
        // UniversalString (UTF-32BE)
        0x1c if content.len() & 3 == 0 => Some(
            content
                .chunks(4)
                .map(|q| {
                    char::from_u32(u32::from_be_bytes([q[0], q[1], q[2], q[3]]))
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The RFC 2253 text of a `Name`'s DER content (see the module's notes).
pub(crate) fn rfc2253(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (tag, set, next) = element(rest)?;
        if tag != 0x31 {
            return None;
        }
        let mut parts = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, atv, after) = element(attrs)?;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value_der) = element(atv)?;
            if oid_tag != 0x06 {
                return None;
            }
            let (value_tag, value, _) = element(value_der)?;
            let mut part = match short_name(oid) {
                Some(n) => n.to_owned(),
                None => dotted(oid)?,
            };
            part.push('=');
            match string_value(value_tag, value) {
                Some(text) => escape_into(&mut part, &text),
                None => {
                    let whole = &value_der[..value_der.len() - element(value_der)?.2.len()];
                    part.push('#');
                    for b in whole {
                        part.push_str(&format!("{b:02x}"));
                    }
                }
            }
            parts.push(part);
            attrs = after;
        }
        rdns.push(parts.join("+"));
        rest = next;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DER of one RDN with one attribute `oid` (content) = `value` (tag, content).
    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut atv = vec![0x06, oid.len() as u8];
        atv.extend_from_slice(oid);
        atv.push(tag);
        atv.push(value.len() as u8);
        atv.extend_from_slice(value);
        let mut seq = vec![0x30, atv.len() as u8];
        seq.extend(atv);
        let mut set = vec![0x31, seq.len() as u8];
        set.extend(seq);
        set
    }

    #[test]
    fn names_come_last_rdn_first_with_rfc_2253_escaping() {
        let mut name = rdn(&[0x55, 4, 6], 0x13, b"DE");
        name.extend(rdn(&[0x55, 4, 10], 0x0c, b"Acme, Inc."));
        name.extend(rdn(&[0x55, 4, 3], 0x0c, "#jörg ".as_bytes()));
        assert_eq!(
            rfc2253(&name).unwrap(),
            "CN=\\#j\\C3\\B6rg\\ ,O=Acme\\, Inc.,C=DE"
        );
        // Unknown types by OID; a non-string value as hex DER; BMPString.
        let mut other = rdn(&[0x2b, 6, 1, 4, 1, 0x82, 0x37, 1], 0x02, &[1]);
        other.extend(rdn(&[0x55, 4, 11], 0x1e, &[0, b'I', 0, b'T']));
        assert_eq!(rfc2253(&other).unwrap(), "OU=IT,1.3.6.1.4.1.311.1=#020101");
        // A header value cannot be split by what a certificate holds.
        let evil = rdn(&[0x55, 4, 3], 0x0c, b"a\r\nX-Injected: 1");
        assert_eq!(rfc2253(&evil).unwrap(), "CN=a\\0D\\0AX-Injected: 1");
        assert_eq!(rfc2253(&[]).unwrap(), "");
    }

    #[test]
    fn malformed_names_give_none_and_never_panic() {
        use rand::{Rng as _, SeedableRng as _};
        assert!(rfc2253(&[0x31, 0x05, 0x30]).is_none());
        assert!(rfc2253(&[0x30, 0x00]).is_none());
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let good = rdn(&[0x55, 4, 3], 0x0c, b"client");
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = rng.gen();
            }
            bytes.truncate(rng.gen_range(0..=bytes.len()));
            let _ = rfc2253(&bytes);
        }
    }
}
