"""Model-extraction attacks over the TF Serving API (Knockoff Nets and its family): the next
issues fill this package; the data layer (`common.data`), the backbone registry
(`common.backbones`) and the client (`serving.client`) are what it builds on."""
