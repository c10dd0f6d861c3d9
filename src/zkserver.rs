//! A private ZooKeeper from the installed package. (Being written.)
