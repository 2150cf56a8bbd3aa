"""`llmdoctor batch`: offline request files through engine replicas on Ray Data."""
