//! WebSocket and other upgrades through the in-process waypoint.
