"""2D chest radiographs: grey conversion and mask transforms, mask writers, chest anatomy and the cardiothoracic ratio, InvertedNet, 2D manifests."""
