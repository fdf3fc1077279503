package manager

import (
	"context"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/cache"
)

// syncingCache is a cache whose WaitForCacheSync reports what the test says, waiting until
// the context ends while it is not synced, as the informer cache does.
type syncingCache struct {
	cache.Cache
	synced atomic.Bool
	calls  atomic.Int32
}

func (c *syncingCache) WaitForCacheSync(ctx context.Context) bool {
	c.calls.Add(1)
	if c.synced.Load() {
		return true
	}
	<-ctx.Done()
	return false
}

func TestCacheSyncedCheck(t *testing.T) {
	c := &syncingCache{}
	check := CacheSyncedCheck(c)
	probe := func() error { return check(httptest.NewRequest("GET", "/readyz", nil)) }
	if err := probe(); err == nil {
		t.Fatal("the check passed before the cache synced")
	}
	if err := probe(); err == nil {
		t.Fatal("the check passed before the cache synced (second probe)")
	}
	c.synced.Store(true)
	if err := probe(); err != nil {
		t.Fatalf("the check failed once the cache synced: %v", err)
	}
	calls := c.calls.Load()
	c.synced.Store(false) // informers do not unsync; the check no longer asks
	if err := probe(); err != nil {
		t.Fatalf("the check failed after it had passed: %v", err)
	}
	if c.calls.Load() != calls {
		t.Error("the check asked the cache again after it had synced")
	}
}
