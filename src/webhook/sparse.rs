//! JSON parsed to a `serde_json::Value` that keeps only the members of some names, at any
//! depth. The others are read and checked as JSON, through serde_json's nesting limit, but
//! not kept: a member kept is an allocation for its name, its value and its place in a
//! map, made and freed at every delivery. Pure: no Postgres.
use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// `body` as a `Value` with only the members named in `keep`. Numbers come through as
/// serde_json reads them (exact, with `arbitrary_precision`).
pub fn from_str(body: &str, keep: &'static [&'static str]) -> serde_json::Result<Value> {
    let mut d = serde_json::Deserializer::from_str(body);
    let v = Keep(keep).deserialize(&mut d)?;
    d.end()?;
    Ok(v)
}

/// A value, kept with the members named in the list.
#[derive(Clone, Copy)]
struct Keep(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Keep {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keep {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(Name(self.0))? {
            match key {
                Key::Kept(k) => {
                    let v = map.next_value_seed(self)?;
                    out.insert(k.to_string(), v);
                }
                Key::Other => map.next_value_seed(Skip)?,
                Key::Number => {
                    let n: String = map.next_value()?;
                    return n.parse::<serde_json::Number>().map(Value::Number).map_err(A::Error::custom);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A value read and dropped. Not serde's `IgnoredAny`: serde_json skips that without
/// recursing, so without its nesting limit, and a body nested deeper than 128 levels
/// must be refused wherever the depth lies, as a whole `Value` refuses it.
#[derive(Clone, Copy)]
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    /// An object, or a number under `arbitrary_precision` (`Key::Number`): its members
    /// skipped alike.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Name(&[]))?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// What a member's name is, compared where it lies in the body, not copied.
enum Key {
    /// The entry of the list it is.
    Kept(&'static str),
    Other,
    /// Not a member: how serde_json hands over a number with `arbitrary_precision` (the
    /// feature the jsonb arguments need), a map of one entry under this name, the
    /// number's text its value.
    Number,
}

const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A member's name, looked up in the list.
struct Name(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().copied().find(|k| *k == v) {
            Some(k) => Key::Kept(k),
            None if v == NUMBER_TOKEN => Key::Number,
            None => Key::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_named_members_at_any_depth() {
        let body = r#"{"a": 1, "b": {"a": [true, null, {"a": "x", "c": 2}], "c": {"a": 3}}, "c": [1, 2]}"#;
        let v = from_str(body, &["a", "b"]).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": {"a": [true, null, {"a": "x"}]}}));
        assert_eq!(from_str(body, &[]).unwrap(), serde_json::json!({}));
        assert_eq!(from_str("[1, \"s\", {\"x\": 1}]", &[]).unwrap(), serde_json::json!([1, "s", {}]));
    }

    #[test]
    fn numbers_stay_exact() {
        let v = from_str(r#"{"n": 123456789012345678901234567890, "f": -1.5e3, "i": -7}"#, &["n", "f", "i"]).unwrap();
        assert_eq!(v["n"].to_string(), "123456789012345678901234567890");
        assert_eq!(v, serde_json::from_str::<Value>(r#"{"n": 123456789012345678901234567890, "f": -1.5e3, "i": -7}"#).unwrap());
    }

    #[test]
    fn what_is_not_kept_is_still_checked() {
        assert!(from_str(r#"{"a": 1, "x": [1, }"#, &["a"]).is_err());
        assert!(from_str(r#"{"a": 1, "x": "\uZZZZ"}"#, &["a"]).is_err());
        assert!(from_str(r#"{"a": 1} trailing"#, &["a"]).is_err());
        let deep = format!(r#"{{"a": 1, "x": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(from_str(&deep, &["a"]).is_err(), "nesting past serde_json's limit of 128");
        let fine = format!(r#"{{"a": 1, "x": {}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(from_str(&fine, &["a"]).unwrap(), serde_json::json!({"a": 1}));
    }
}
