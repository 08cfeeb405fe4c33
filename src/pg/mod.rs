//! The PostgreSQL glue, apart from the domain modules: running kept SPI plans
//! (`spi`), answering one-row functions with one composite (`one_row`), reading table
//! rows whole (`whole_row`), reading jsonb arguments in place (`jsonb`), and handing
//! many rows to a statement as one `record[]` (`records`). Nothing here
//! knows of credits, events or plans.
mod collation_tests;
pub mod direct;
mod direct_tests;
pub mod jsonb;
mod jsonb_param_tests;
pub mod one_row;
mod one_row_tests;
pub mod records;
mod records_tests;
pub mod set_rows;
pub mod spi;
pub mod whole_row;
