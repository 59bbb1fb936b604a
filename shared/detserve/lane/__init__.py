"""The transport of sync predictions between the API and the workers."""
