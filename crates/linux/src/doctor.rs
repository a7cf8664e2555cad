//! `firkin doctor`: which kernel features this host has, and what needs them.
