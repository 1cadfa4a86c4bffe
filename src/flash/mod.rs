//! Writing a node image to a USB stick (being written).
