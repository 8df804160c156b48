package rpc

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Channel is an in-process gRPC channel: a grpc.ClientConnInterface that
// calls registered service implementations directly, through the same unary
// interceptor chain as the network server. The REST gateway uses it so that
// a REST request pays neither a loopback TCP hop nor a second HTTP/2 stack,
// yet authenticates, maps errors and logs exactly as a gRPC call does.
//
// The caller's outgoing metadata becomes the handler's incoming metadata.
// Whatever peer the caller's context carries (the gateway sets the HTTP
// client's TCP address) is the handler's peer. Only unary methods are
// supported.
type Channel struct {
	interceptor grpc.UnaryServerInterceptor
	methods     map[string]methodHandler
}

type methodHandler struct {
	impl any
	desc grpc.MethodDesc
}

var (
	_ grpc.ClientConnInterface = (*Channel)(nil)
	_ grpc.ServiceRegistrar    = (*Channel)(nil)
)

func newChannel(interceptor grpc.UnaryServerInterceptor) *Channel {
	return &Channel{interceptor: interceptor, methods: make(map[string]methodHandler)}
}

// RegisterService makes impl's unary methods callable on the channel.
func (c *Channel) RegisterService(desc *grpc.ServiceDesc, impl any) {
	for _, m := range desc.Methods {
		c.methods["/"+desc.ServiceName+"/"+m.MethodName] = methodHandler{impl: impl, desc: m}
	}
}

// Invoke calls method with args, filling reply. Errors are gRPC status
// errors, as from a network call.
func (c *Channel) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	h, ok := c.methods[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	in, ok := args.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "request of type %T is not a protobuf message", args)
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "reply of type %T is not a protobuf message", reply)
	}
	// The caller's outgoing metadata becomes the handler's incoming
	// metadata, and is cleared as outgoing metadata so that a handler's own
	// calls could never forward the client's credentials. It is not copied
	// again: FromOutgoingContext already returns a copy.
	md, _ := metadata.FromOutgoingContext(ctx)
	ctx = metadata.NewOutgoingContext(ctx, nil)
	ctx = metadata.NewIncomingContext(ctx, md)
	stream := &transportStream{method: method}
	ctx = grpc.NewContextWithServerTransportStream(ctx, stream)

	// The handler decodes into a fresh message; copying keeps the caller's
	// args untouched, as a network call would.
	dec := func(v any) error {
		m, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("decode into %T: not a protobuf message", v)
		}
		proto.Merge(m, in)
		return nil
	}
	resp, err := h.desc.Handler(h.impl, ctx, dec, c.interceptor)
	header, trailer := stream.metadata()
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = trailer
		}
	}
	if err != nil {
		return status.Convert(err).Err()
	}
	m, ok := resp.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "response of type %T is not a protobuf message", resp)
	}
	return moveInto(out, m)
}

// moveInto makes out hold resp's fields, sharing rather than copying its
// nested messages and lists: resp is the handler's response, which nothing
// else holds once the call has returned, and a deep copy (proto.Merge)
// costs reflection and an allocation per nested message on every call.
func moveInto(out, resp proto.Message) error {
	dst, src := out.ProtoReflect(), resp.ProtoReflect()
	if dst.Descriptor().FullName() != src.Descriptor().FullName() {
		return status.Errorf(codes.Internal, "reply of type %s for a response of type %s", dst.Descriptor().FullName(), src.Descriptor().FullName())
	}
	proto.Reset(out)
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u)
	}
	return nil
}

// NewStream is not supported: tokend has no streaming RPCs.
func (c *Channel) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "streaming is not supported in-process")
}

// transportStream collects the headers and trailers a handler sets, as
// grpc.SetHeader and grpc.SetTrailer require a stream in the context.
type transportStream struct {
	method  string
	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
}

func (s *transportStream) Method() string { return s.method }

func (s *transportStream) SetHeader(md metadata.MD) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.header = metadata.Join(s.header, md)
	return nil
}

func (s *transportStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }

func (s *transportStream) SetTrailer(md metadata.MD) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trailer = metadata.Join(s.trailer, md)
	return nil
}

func (s *transportStream) metadata() (metadata.MD, metadata.MD) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.header, s.trailer
}

// splitMethod splits "/pkg.Service/Method" for logging.
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	service, method, _ = strings.Cut(full, "/")
	return service, method
}
