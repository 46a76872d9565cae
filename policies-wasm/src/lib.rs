//! WebAssembly policy host.
//!
//! Not implemented yet: this crate is the reserved home of the wasmtime host, the policy
//! contract (WIT) and the guest SDK, which arrive with the policy issue. Policies will be pure
//! functions of the request and all candidates, run sandboxed on the router's request path.
