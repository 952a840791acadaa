"""The serving stage: gRPC servicers (translation only), interceptors for auth and audit, the server,
where things run (Ray, actors) and the `gallery` command line."""
