"""The `detserve` command and `detserve up`: starts the services, apart from the library they share."""
