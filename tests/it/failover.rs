//! placeholder: tests being written
