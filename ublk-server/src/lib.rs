//! A reference ublk server.
