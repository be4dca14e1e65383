//! Pure data transformation: cleansing helpers, record validation, versioned jq mappings.

pub mod cleanse;
pub mod jq;
pub mod validate;
