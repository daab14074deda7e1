//! Rule evaluation (being built).
