//! Identifiers carried by events and commands.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (version 4) identifier.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// A deterministic identifier derived from `name` (UUID version 5 in
            /// eventfold's namespace): the same name always gives the same id.
            pub fn from_name(name: &str) -> Self {
                Self(Uuid::new_v5(&NAMESPACE, name.as_bytes()))
            }

            /// The identifier with exactly these 16 bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }

            /// The 16 bytes of the identifier, as stored on disk.
            pub const fn to_bytes(self) -> [u8; 16] {
                *self.0.as_bytes()
            }

            /// The identifier as a UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

/// The namespace of eventfold's name-derived (version 5) identifiers.
const NAMESPACE: Uuid = Uuid::from_bytes([
    0x6b, 0x1e, 0x0c, 0x5a, 0x8f, 0x3d, 0x4e, 0x21, 0x9a, 0x47, 0x5d, 0x0e, 0xf1, 0x2c, 0x83, 0x90,
]);

uuid_id!(
    /// Identifies one event. Unique across the store (invariant 4).
    EventId
);
uuid_id!(
    /// Ties together every message that stems from one original request.
    CorrelationId
);
uuid_id!(
    /// The id of the message (command or event) that caused this one.
    CausationId
);
uuid_id!(
    /// Identifies one command. An append that carries a command id already
    /// applied returns the original outcome and writes nothing, so a retry with
    /// the same command id is always safe. Process managers derive command ids
    /// with [`CommandId::from_name`] so that a re-dispatch is deduplicated.
    CommandId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_derived_ids_are_deterministic_and_distinct() {
        assert_eq!(CommandId::from_name("a"), CommandId::from_name("a"));
        assert_ne!(CommandId::from_name("a"), CommandId::from_name("b"));
        assert_ne!(EventId::random(), EventId::random());
    }

    #[test]
    fn bytes_round_trip() {
        let id = EventId::random();
        assert_eq!(EventId::from_bytes(id.to_bytes()), id);
    }
}
