//! TenantIdRules::parse / parse_bytes on arbitrary bytes: never panics,
//! accepts exactly 1..=max bytes of [A-Za-z0-9._-] with an alphanumeric
//! first byte, and ids roundtrip through Display, FromStr and serde.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_tenancy::tenant::InvalidTenantId;
use tower_tenancy::{TenantId, TenantIdRules};

fn reference(value: &[u8], max: usize) -> Result<(), InvalidTenantId> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if value.is_empty() {
        Err(InvalidTenantId::Empty)
    } else if value.len() > max {
        Err(InvalidTenantId::TooLong { max })
    } else if let Some(position) = value.iter().position(|b| !allowed(b)) {
        Err(InvalidTenantId::BadCharacter { position })
    } else if !value[0].is_ascii_alphanumeric() {
        Err(InvalidTenantId::BadStart)
    } else {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, value)) = data.split_first() else {
        return;
    };
    // Low 7 bits pick max_len around the interesting edges, the top bit lowercase.
    let max = match config & 0x7f {
        0 => 0,
        1..=100 => usize::from(config & 0x7f),
        n => 64 + usize::from(n) * 2,
    };
    let lowercase = config & 0x80 != 0;
    let rules = TenantIdRules::default().max_len(max).lowercase(lowercase);
    let want = reference(value, max.clamp(1, 255));

    let got = rules.parse_bytes(value);
    assert_eq!(got.clone().map(|_| ()), want);
    if let Ok(s) = std::str::from_utf8(value) {
        assert_eq!(rules.parse(s), got);
    }
    if let Ok(id) = got {
        let s = std::str::from_utf8(value).unwrap();
        let expected = if lowercase {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        };
        assert_eq!(id.as_str(), expected);
        // Display / FromStr / serde roundtrips (with the default rules when they apply).
        if id.as_str().len() <= TenantIdRules::DEFAULT_MAX_LEN {
            assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        }
    }
    // serde accepts exactly what the default rules accept.
    if let Ok(s) = std::str::from_utf8(value) {
        let json = serde_json::to_string(s).unwrap();
        assert_eq!(
            serde_json::from_str::<TenantId>(&json).is_ok(),
            reference(value, TenantIdRules::DEFAULT_MAX_LEN).is_ok()
        );
    }
});
