//! Writing material into file contents. The extension point for key formats: a new
//! [`Format`] variant (pem, jwk, jwks) gets its encoder here, with the key's algorithm.

use super::params::Format;
use base64::Engine;
use zeroize::Zeroizing;

/// Encode `material` of a key of `algorithm` (e.g. "aes-256") into file contents, in
/// zeroizing storage.
pub fn encode(
    format: Format,
    _algorithm: &str,
    material: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    Ok(match format {
        Format::Raw => Zeroizing::new(material.to_vec()),
        Format::Base64 => {
            let mut out = Zeroizing::new(vec![
                0u8;
                base64::encoded_len(material.len(), true)
                    .unwrap_or(0)
            ]);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(material, &mut out[..])
                .map_err(|e| e.to_string())?;
            out.truncate(n);
            out
        }
        Format::Hex => {
            let mut out = Zeroizing::new(vec![0u8; material.len() * 2]);
            hex::encode_to_slice(material, &mut out[..]).map_err(|e| e.to_string())?;
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let m = [0x00, 0xff, 0x10, 0x7e];
        assert_eq!(&encode(Format::Raw, "aes-256", &m).unwrap()[..], &m);
        assert_eq!(
            &encode(Format::Hex, "aes-256", &m).unwrap()[..],
            b"00ff107e"
        );
        assert_eq!(
            &encode(Format::Base64, "aes-256", &m).unwrap()[..],
            b"AP8Qfg=="
        );
        let k = [9u8; 32];
        let b = encode(Format::Base64, "aes-256", &k).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&b[..])
                .unwrap(),
            k
        );
    }
}
