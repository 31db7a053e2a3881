"""Plant analytics: root-cause rankings, drift monitors and defect clustering over the record store."""
