//! Clients for two Azure services a source backs up, each a thin typed layer over the
//! documented REST API (no Azure SDK: those pull a large tree for a handful of calls):
//!
//! - [`blob`]: Azure Blob Storage (containers, blobs, block uploads), authenticated by the
//!   storage account's Shared Key or by a SAS token;
//! - [`sql`]: Azure SQL Database through Azure Resource Manager (restore points, point-in-time
//!   restore, bacpac export, long-running operations), authenticated by a Microsoft Entra ID
//!   service principal (OAuth2 client credentials).
//!
//! Secrets (account keys, SAS signatures, client secrets, tokens, SQL passwords) are kept in
//! [`Secret`] and never appear in errors, `Debug` output or logs.

pub mod blob;
pub mod sql;

pub use crate::Secret;

/// `text` (a URL, or a message that may quote one) with the value of every `sig=` query
/// parameter replaced by `REDACTED`: a SAS signature is a credential.
pub fn redact_sas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = find_sig_param(&lower) else {
            out.push_str(rest);
            return out;
        };
        let value_start = at + "sig=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("REDACTED");
        let value_len = rest[value_start..]
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '<' || c.is_whitespace())
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
}

/// Where `sig=` starts as a parameter name (at the start, or after `?`, `&` or a space), in
/// a lowercased text.
fn find_sig_param(lower: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = lower[from..].find("sig=") {
        let at = from + found;
        let before = lower[..at].chars().next_back();
        if before.is_none_or(|c| c == '?' || c == '&' || c.is_whitespace()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// An error and its causes, one line (reqwest's own text names only the outermost).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    redact_sas(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_signatures_are_redacted_wherever_they_appear() {
        assert_eq!(
            redact_sas("https://a.blob.core.windows.net/c?sv=2021-08-06&sig=abc%2Bdef&se=x"),
            "https://a.blob.core.windows.net/c?sv=2021-08-06&sig=REDACTED&se=x"
        );
        assert_eq!(redact_sas("?SIG=abc"), "?SIG=REDACTED");
        assert_eq!(redact_sas("sig=abc"), "sig=REDACTED");
        assert_eq!(
            redact_sas("url 'x?a=1&sig=q' and x?sig=r"),
            "url 'x?a=1&sig=REDACTED' and x?sig=REDACTED"
        );
        // Only a parameter named exactly `sig` is a signature.
        assert_eq!(
            redact_sas("?xsig=keep&design=keep"),
            "?xsig=keep&design=keep"
        );
    }
}
