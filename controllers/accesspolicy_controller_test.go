package controllers_test

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// TestAccessPolicyReportsExpressionErrors: a policy whose when expression does not compile is
// Ready=False with reason InvalidExpression naming the rule; fixing it makes it Ready.
func TestAccessPolicyReportsExpressionErrors(t *testing.T) {
	ctx := t.Context()
	ns := newNamespace(t)
	p := &keywardv1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: keywardv1.AccessPolicySpec{
			Hosts: []string{"app.example.test"},
			Rules: []keywardv1.AccessRule{
				{Paths: []string{"/public/"}, Anonymous: true},
				{Paths: []string{"/"}, Issuers: []keywardv1.IssuerReference{{Name: "main"}}, When: "'admin' in claims.groups &&"},
			},
		},
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	waitCondition := func(status metav1.ConditionStatus, reason, msg string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var got keywardv1.AccessPolicy
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), &got); err != nil {
				t.Fatal(err)
			}
			c := meta.FindStatusCondition(got.Status.Conditions, keywardv1.ConditionReady)
			if c != nil && c.Status == status && c.Reason == reason && strings.Contains(c.Message, msg) &&
				got.Status.ObservedGeneration == got.Generation && c.ObservedGeneration == got.Generation {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Ready condition = %+v, want %s %s containing %q", c, status, reason, msg)
			}
			time.Sleep(pollInterval)
		}
	}
	waitCondition(metav1.ConditionFalse, keywardv1.ReasonInvalidExpression, "rules[1].when")

	patch := client.MergeFrom(p.DeepCopy())
	p.Spec.Rules[1].When = "'admin' in claims.groups"
	if err := k8s.Patch(ctx, p, patch); err != nil {
		t.Fatal(err)
	}
	waitCondition(metav1.ConditionTrue, keywardv1.ReasonReady, "")

	patch = client.MergeFrom(p.DeepCopy())
	p.Spec.Rules[1].When = "size(claims) + 1"
	if err := k8s.Patch(ctx, p, patch); err != nil {
		t.Fatal(err)
	}
	waitCondition(metav1.ConditionFalse, keywardv1.ReasonInvalidExpression, "not bool")
}
