"""`llmdoctor serve --replicas N`: the API on Ray Serve in front of N engine replicas."""
