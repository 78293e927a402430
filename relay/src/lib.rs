//! Tandem relay: STUN/TURN server and media relay.
