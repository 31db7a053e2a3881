"""The model registry: versioned artifacts per recipe, which one is in production, promote and roll back."""
