//! The AutoReseed state machine (to be written).
