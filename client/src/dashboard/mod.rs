//! `busctl dashboard`: the bus shown as a live web page.

pub mod board;
